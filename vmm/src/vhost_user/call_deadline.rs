//! A deadline on each exchange with a backend (a handshake, an activation, a reset, a config
//! read or write), so that a stopped or stuck backend never holds a vCPU, the API or the
//! reconnect thread for longer than [`super::reconnect::CALL_TIMEOUT`].
//!
//! A socket timeout cannot give one: vhost's `Endpoint` takes the EAGAIN of a receive or send
//! that timed out for a transient error (`SocketRetry`) and tries again, for ever. Instead, an
//! exchange runs while [`armed`]: one thread (for every device) shuts down the connection of an
//! exchange still running at its deadline; vhost then sees the connection end, the call fails
//! like any other call to a dead backend, and the device reconnects.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// One exchange in progress.
struct Running {
    deadline: Instant,
    /// A duplicate of the connection's socket (shutting it down shuts the connection down).
    socket: OwnedFd,
    device: String,
    timeout: Duration,
}

#[derive(Default)]
struct Exchanges {
    next_id: u64,
    running: BTreeMap<u64, Running>,
}

#[derive(Default)]
struct Watchdog {
    exchanges: Mutex<Exchanges>,
    wake: Condvar,
}

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, Exchanges> {
        self.exchanges.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shut down the connection of every exchange past its deadline, then sleep until the
    /// next deadline or a new exchange; for as long as the process runs.
    fn run(&self) {
        let mut exchanges = self.lock();
        loop {
            let now = Instant::now();
            exchanges.running.retain(|_, r| {
                if r.deadline > now {
                    return true;
                }
                // SAFETY: shutdown on the descriptor this entry owns; it stays open (and owned).
                unsafe { libc::shutdown(r.socket.as_raw_fd(), libc::SHUT_RDWR) };
                tracing::warn!(device = %r.device, timeout = ?r.timeout, "the vhost-user backend did not answer in time; closing the connection");
                false
            });
            let next = exchanges.running.values().map(|r| r.deadline).min();
            exchanges = match next {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(now);
                    match self.wake.wait_timeout(exchanges, wait) {
                        Ok((guard, _)) => guard,
                        Err(e) => e.into_inner().0,
                    }
                }
                None => self.wake.wait(exchanges).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// The process's watchdog, started on first use; `None` if its thread could not be started.
fn watchdog() -> Option<&'static Watchdog> {
    static WATCHDOG: OnceLock<Option<Arc<Watchdog>>> = OnceLock::new();
    WATCHDOG
        .get_or_init(|| {
            let watchdog = Arc::new(Watchdog::default());
            let runner = watchdog.clone();
            match crate::threads::builder("vhost-user-deadline")
                .spawn(move || runner.run())
            {
                Ok(_) => Some(watchdog),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the vhost-user call watchdog; calls to a hung backend will not time out");
                    None
                }
            }
        })
        .as_deref()
}

/// An exchange on a connection, under its deadline until dropped.
#[must_use = "the deadline only holds while the guard lives"]
pub(super) struct Armed {
    id: Option<u64>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let (Some(id), Some(watchdog)) = (self.id, watchdog()) {
            watchdog.lock().running.remove(&id);
        }
    }
}

/// Put the exchange `device` is about to have on `socket` under a deadline `timeout` from now.
/// Without a watchdog (or a descriptor to give it) the exchange has no deadline.
pub(super) fn armed(device: &str, socket: RawFd, timeout: Duration) -> Armed {
    let Some(watchdog) = watchdog() else {
        return Armed { id: None };
    };
    // SAFETY: dup of a descriptor the caller keeps open; the copy is owned below.
    let dup = unsafe { libc::dup(socket) };
    if dup < 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%device, %error, "a vhost-user exchange runs without a deadline");
        return Armed { id: None };
    }
    // SAFETY: `dup` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(dup) };
    let deadline = Instant::now() + timeout;
    let mut exchanges = watchdog.lock();
    let id = exchanges.next_id;
    exchanges.next_id += 1;
    let sooner = exchanges.running.values().all(|r| r.deadline > deadline);
    exchanges.running.insert(
        id,
        Running {
            deadline,
            socket,
            device: device.to_string(),
            timeout,
        },
    );
    if sooner {
        watchdog.wake.notify_one();
    }
    Armed { id: Some(id) }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn an_exchange_past_its_deadline_has_its_connection_shut_down() {
        let (mut ours, _backend) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let _armed = armed("blk0", ours.as_raw_fd(), Duration::from_millis(50));
        // a backend that never answers: the read ends when the watchdog shuts the socket down
        let mut byte = [0u8];
        assert_eq!(ours.read(&mut byte).unwrap(), 0);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn an_exchange_done_in_time_keeps_its_connection() {
        let (mut done, mut backend) = UnixStream::pair().unwrap();
        drop(armed("blk0", done.as_raw_fd(), Duration::from_millis(20)));
        // a later deadline that does expire: the watchdog got past the first one by then
        let (mut late, _other) = UnixStream::pair().unwrap();
        let _armed = armed("blk1", late.as_raw_fd(), Duration::from_millis(40));
        let mut byte = [0u8];
        assert_eq!(
            late.read(&mut byte).unwrap(),
            0,
            "shut down at its deadline"
        );
        backend.write_all(b"x").unwrap();
        done.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x", "the disarmed connection still works");
        done.write_all(b"y").unwrap();
        backend.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"y");
    }
}
