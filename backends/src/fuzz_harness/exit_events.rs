//! The vring workers' exit-event descriptors, which vhost-user-backend 0.24 leaves open.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use vhost_user_backend::{VhostUserBackend, VringEpollHandler};

/// vhost-user-backend 0.24 registers each vring worker's exit-event consumer with the
/// worker's epoll as a raw descriptor and never closes it (`VringEpollHandler::new` in
/// event_loop.rs: `consumer.into_raw_fd()`): every connection leaves one eventfd per worker
/// thread open after its daemon is dropped. A fuzzer would run out of descriptors within
/// thousands of inputs — and then, with no exit event, a daemon's workers never stop and
/// dropping it hangs. So the driver finds them while the daemon lives (the descriptors its
/// workers' epolls watch under the exit event's key: the exit consumer, and the vring-enabled
/// event the library does close), keeps a duplicate of each, and after the daemon is gone
/// closes those still open on the same file.
pub(super) struct ExitEventLeak {
    candidates: Vec<(RawFd, OwnedFd)>,
}

impl ExitEventLeak {
    pub(super) fn find<B: VhostUserBackend>(
        workers: &[Arc<VringEpollHandler<B>>],
        num_queues: usize,
    ) -> Self {
        let mut candidates = Vec::new();
        for w in workers {
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", w.as_raw_fd()))
            else {
                continue;
            };
            // "tfd: 12 events: 19 data: 4 pos:0 ino:... sdev:..." (data in hex)
            for line in info.lines().filter(|l| l.starts_with("tfd:")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let field = |name: &str| {
                    let at = words.iter().position(|w| *w == name)?;
                    words.get(at + 1).copied()
                };
                let fd = field("tfd:").and_then(|v| v.parse::<RawFd>().ok());
                let data = field("data:").and_then(|v| u64::from_str_radix(v, 16).ok());
                if let (Some(fd), Some(data)) = (fd, data) {
                    if data == num_queues as u64 {
                        if let Some(dup) = duplicate(fd) {
                            candidates.push((fd, dup));
                        }
                    }
                }
            }
        }
        ExitEventLeak { candidates }
    }

    /// Close the descriptors the daemon left open; returns how many.
    pub(super) fn close(self) -> usize {
        let mut closed = 0;
        for (fd, dup) in self.candidates {
            if same_file(fd, dup.as_raw_fd()) {
                // SAFETY: `fd` still refers to the exit event's file and the library gave up
                // its ownership (into_raw_fd) for an epoll that is gone with its joined worker:
                // nothing in the process uses or will close it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                closed += 1;
            }
        }
        closed
    }
}

fn duplicate(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC passes no memory; an fd that is not open gives EBADF.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    // SAFETY: `dup` is a new descriptor we own.
    (dup >= 0).then(|| unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Whether descriptors `a` and `b` of this process refer to the same open file: kcmp, or
/// where a container forbids it, the eventfd ids in /proc (Linux 6.1 and later).
fn same_file(a: RawFd, b: RawFd) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(std::process::id() as i32);
    // SAFETY: kcmp compares two descriptor numbers of this process; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            libc::c_long::from(a),
            libc::c_long::from(b),
        )
    };
    if r >= 0 {
        return r == 0;
    }
    let id = |fd: RawFd| {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        let line = info.lines().find(|l| l.starts_with("eventfd-id:"))?;
        line.split_whitespace().nth(1).map(str::to_string)
    };
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}
