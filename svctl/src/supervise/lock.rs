//! `<runtime>/NAME/supervisor.lock`: held by the domain's one supervisor for its whole life,
//! and by `svctl` while it cleans up after a domain that has none. A second supervisor (two
//! `svctl start` at once, or systemd restarting one while `svctl start` adopts) refuses to run.
//! The kernel drops the lock when its holder dies, even by SIGKILL.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::domain::Runtime;

pub struct SupervisorLock {
    _file: File,
}

impl SupervisorLock {
    /// The lock, or None if another process holds it.
    pub fn try_acquire(rt: &Runtime) -> Result<Option<SupervisorLock>, String> {
        let path = rt.dir.join("supervisor.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(SupervisorLock { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(format!("cannot lock {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::TempRuntime;
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_free_again_once_dropped() {
        let tmp = TempRuntime::new();
        let first = SupervisorLock::try_acquire(&tmp.0).expect("lock");
        assert!(first.is_some());
        // another open file description, as another process would have
        let second = SupervisorLock::try_acquire(&tmp.0).expect("lock");
        assert!(second.is_none(), "two holders");
        drop(first);
        assert!(SupervisorLock::try_acquire(&tmp.0).expect("lock").is_some());
    }
}
