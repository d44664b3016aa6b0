//! vhost-user-backend's vring worker threads (one epoll loop each), how they stop, and what
//! becomes of an event a device fails to handle.
//!
//! vhost-user-backend ends a worker thread for good when `handle_event` returns an error: the
//! queues it serves go dead, silently, while the connection stays up. [`recover`] keeps the
//! thread: the error is counted ([`errors`]; each log line carries the count so far), logged,
//! and the frontend connection is shut down ([`set_connection`], by the serve loop), so the
//! frontend reconnects and sets the device up afresh on a new one — a device reset the guest
//! does not see (the vmm replays every ring from the guest's used index, and blk resubmits
//! what was in flight). A backend process serves one connection at a time, so the connection
//! is one per process.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Errors logged at warning level before the rest go to debug (a guest that makes every
/// connection fail must not flood the host's log).
const LOUD_ERRORS: u64 = 20;

static ERRORS: AtomicU64 = AtomicU64::new(0);
static CONNECTION: Mutex<Option<UnixStream>> = Mutex::new(None);

/// The current frontend connection (a copy of its socket), ended by [`recover`] on an error;
/// `None` when it ends.
pub fn set_connection(connection: Option<UnixStream>) {
    if let Ok(mut c) = CONNECTION.lock() {
        *c = connection;
    }
}

/// How many events the workers failed to handle since the process started.
pub fn errors() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

/// The body of `VhostUserBackend::handle_event`: run `handle`; an error is counted, logged and
/// ends the frontend connection instead of the worker thread (see the module documentation).
pub fn recover(worker: usize, handle: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let Err(e) = handle() else {
        return Ok(());
    };
    let n = ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= LOUD_ERRORS {
        tracing::warn!(
            "worker {worker}: {e}; ending the connection so the frontend sets the device up              again (worker error {n})"
        );
    } else {
        tracing::debug!("worker {worker}: {e} (worker error {n})");
    }
    if let Ok(c) = CONNECTION.lock() {
        if let Some(socket) = c.as_ref() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
    Ok(())
}

thread_local! {
    /// The exit events' consumer descriptors handed to vhost-user-backend on this thread
    /// (the one that makes the daemon: `VhostUserDaemon::new` asks for them) since the last
    /// [`close_exit_events`]. Per thread, so that daemons made on other threads (tests,
    /// the fuzz driver) keep theirs.
    static EXIT_CONSUMERS: std::cell::RefCell<Vec<RawFd>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A fresh exit event for one worker thread, the body of `VhostUserBackend::exit_event`.
/// Without one a worker never leaves its loop and dropping the daemon hangs. `None` if the
/// kernel gives no eventfd.
///
/// vhost-user-backend 0.24 puts the consumer in the worker's epoll with `into_raw_fd` and
/// never closes it: one eventfd per worker per connection would leak (a backend that serves
/// many connections — reconnects, hotplug cycles — ran out of descriptors). Its number is
/// kept here and [`close_exit_events`] closes it once the daemon is gone.
pub fn exit_event() -> Option<(EventConsumer, EventNotifier)> {
    let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
    EXIT_CONSUMERS.with(|fds| fds.borrow_mut().push(consumer.as_raw_fd()));
    Some((consumer, notifier))
}

/// Close the exit events' consumers [`exit_event`] handed out on this thread. Only once the
/// daemon that took them is dropped (its worker threads joined, their epolls closed): nothing uses them then,
/// and nothing else owns those descriptors. Returns how many it closed.
pub fn close_exit_events() -> usize {
    let fds = EXIT_CONSUMERS.with(|fds| std::mem::take(&mut *fds.borrow_mut()));
    let closed = fds.len();
    for fd in fds {
        // SAFETY: `fd` is an exit-event consumer vhost-user-backend took with `into_raw_fd`
        // and leaked; its daemon is dropped, so no one else owns or uses it.
        unsafe { libc::close(fd) };
    }
    closed
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::IntoRawFd;

    use super::*;

    fn open(fd: RawFd) -> bool {
        std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists()
    }

    #[test]
    fn exit_event_consumers_leaked_as_vhost_user_backend_does_are_closed() {
        // what VringEpollHandler::new does with each: into_raw_fd, never closed
        let fds: Vec<RawFd> = (0..3)
            .map(|_| exit_event().expect("eventfd").0.into_raw_fd())
            .collect();
        assert!(fds.iter().all(|fd| open(*fd)));
        assert_eq!(close_exit_events(), 3);
        assert!(fds.iter().all(|fd| !open(*fd)), "still open: {fds:?}");
    }

    #[test]
    fn an_error_is_counted_ends_the_connection_and_keeps_the_worker() {
        let (ours, frontend) = UnixStream::pair().unwrap();
        set_connection(Some(ours));
        assert!(recover(0, || Ok(())).is_ok());
        let before = errors();
        assert!(recover(3, || Err(io::Error::other("broken ring"))).is_ok());
        assert!(errors() > before, "counted");
        let mut buf = [0u8; 1];
        assert_eq!(
            (&frontend).read(&mut buf).unwrap(),
            0,
            "the frontend sees the end"
        );
        set_connection(None);
    }

    #[test]
    fn each_worker_gets_its_own_exit_event() {
        let (consumer, notifier) = super::exit_event().unwrap();
        notifier.notify().unwrap();
        assert!(consumer.consume().is_ok());
        assert!(super::exit_event().is_some());
    }
}
