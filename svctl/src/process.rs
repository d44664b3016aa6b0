//! A domain's processes as the kernel knows them. A [`ProcessId`] is a PID with its start time
//! (`/proc/PID/stat` field 22), so that a recycled PID is never taken for a domain's process. A
//! [`Watched`] process has a pidfd: it is watched (`poll`) and signalled through it, whether
//! it is our child or not. A supervisor that adopts a running domain cannot `waitpid()` the
//! vmm and the backends its predecessor started; it polls their pidfds instead, as systemd
//! does for the processes of a unit it finds running.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Why a recorded process cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("process {pid} has ended")]
    Gone { pid: u32 },
    #[error("process {pid} is not the one recorded: it started at tick {found}, the record says {recorded} (the PID was reused)")]
    Recycled { pid: u32, recorded: u64, found: u64 },
    #[error("cannot open a pidfd for process {pid}")]
    Pidfd {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse /proc/{pid}/stat")]
    Stat { pid: u32 },
}

/// A process: its PID and when it started (clock ticks after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

/// The state letter and the start time from the text of `/proc/PID/stat` (the command name,
/// field 2, is in parentheses and may itself contain spaces and parentheses).
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // field 3 (state) is fields[0]; field 22 (starttime) is fields[19]
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn stat(pid: u32) -> Result<(char, u64), ProcessError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|_| ProcessError::Gone { pid })?;
    parse_stat(&text).ok_or(ProcessError::Stat { pid })
}

fn ended(state: char) -> bool {
    state == 'Z' || state == 'X'
}

impl ProcessId {
    /// The process that has `pid` now.
    pub fn of(pid: u32) -> Result<ProcessId, ProcessError> {
        let (_, start_time) = stat(pid)?;
        Ok(ProcessId { pid, start_time })
    }

    /// True while this very process runs (not a zombie, and its PID not reused).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Ok((state, start)) if start == self.start_time && !ended(state))
    }
}

/// How a watched process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Status(ExitStatus),
    /// An adopted process ended: only its parent learns how.
    Unknown,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Exit::Status(s) => write!(f, "{s}"),
            Exit::Unknown => f.write_str("an unknown status (not our child)"),
        }
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wait up to `timeout` until one of `fds` is readable (a pidfd is readable once its process
/// has ended; a listening socket once a client waits). How many are.
pub fn poll_readable(fds: &[BorrowedFd], timeout: Duration) -> io::Result<usize> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: poll on a vector of pollfds we own, its length passed with it, for a bounded time.
    let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(n as usize)
}

/// A process watched through its pidfd: our child (reaped, with its exit status) or an
/// adopted one.
#[derive(Debug)]
pub struct Watched {
    pub id: ProcessId,
    pidfd: OwnedFd,
    /// None for an adopted process: not ours to wait for.
    child: Option<Child>,
    exit: Option<Exit>,
}

impl Watched {
    /// A child we just started (its PID cannot be reused before we reap it). If it cannot be
    /// watched it is killed, not left behind.
    pub fn spawned(mut child: Child) -> Result<Watched, ProcessError> {
        let pid = child.id();
        let watched = pidfd_open(pid)
            .map_err(|source| ProcessError::Pidfd { pid, source })
            .and_then(|pidfd| Ok((pidfd, ProcessId::of(pid)?)));
        match watched {
            Ok((pidfd, id)) => Ok(Watched {
                id,
                pidfd,
                child: Some(child),
                exit: None,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// The recorded process, if it still runs: the pidfd is opened first and the start time
    /// checked after, so that the pidfd is known to be the recorded process's.
    pub fn adopt(id: ProcessId) -> Result<Watched, ProcessError> {
        let pid = id.pid;
        let pidfd = pidfd_open(pid).map_err(|source| match source.raw_os_error() {
            Some(libc::ESRCH) => ProcessError::Gone { pid },
            _ => ProcessError::Pidfd { pid, source },
        })?;
        let (state, found) = stat(pid)?;
        if found != id.start_time {
            return Err(ProcessError::Recycled {
                pid,
                recorded: id.start_time,
                found,
            });
        }
        if ended(state) {
            return Err(ProcessError::Gone { pid });
        }
        Ok(Watched {
            id,
            pidfd,
            child: None,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    /// The pidfd, for [`poll_readable`].
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// How it ended, once it has (without waiting; a child of ours is reaped).
    pub fn exited(&mut self) -> Option<Exit> {
        if self.exit.is_none() && matches!(poll_readable(&[self.pidfd()], Duration::ZERO), Ok(1)) {
            self.exit = Some(match &mut self.child {
                // readable: it has ended, so this returns at once
                Some(c) => c.wait().map_or(Exit::Unknown, Exit::Status),
                None => Exit::Unknown,
            });
        }
        self.exit
    }

    /// Wait up to `limit` for it to end.
    pub fn wait_for(&mut self, limit: Duration) -> Option<Exit> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(exit) = self.exited() {
                return Some(exit);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = poll_readable(&[self.pidfd()], left);
        }
    }

    /// Send `signal` (through the pidfd: never to a process that took over the PID).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with our pidfd, a signal number, no siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A handle that signals the same process from another thread.
    pub fn signaller(&self) -> io::Result<Signaller> {
        Ok(Signaller(self.pidfd.try_clone()?))
    }
}

/// Signals one process through a pidfd of its own (for the supervisor's signal thread).
pub struct Signaller(OwnedFd);

impl Signaller {
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with our pidfd, a signal number, no siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Stop processes: SIGTERM to each that runs, then SIGKILL to those still running after
/// `limit`. The PIDs that had to be killed.
pub fn stop_all(procs: &mut [&mut Watched], limit: Duration) -> Vec<u32> {
    for p in procs.iter_mut() {
        if p.exited().is_none() {
            let _ = p.signal(libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + limit;
    let mut killed = Vec::new();
    for p in procs.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if p.wait_for(left).is_none() {
            let _ = p.signal(libc::SIGKILL);
            // SIGKILL takes effect at once unless the process is stuck in the kernel
            let _ = p.wait_for(Duration::from_secs(2));
            killed.push(p.pid());
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::{Command, Stdio};

    use super::*;

    /// A `sleep` that is not our child: started by a shell that exits at once, so that it is
    /// reparented (to init or the nearest subreaper).
    fn orphan_sleep() -> u32 {
        let mut sh = Command::new("/bin/sh")
            .args(["-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut out = String::new();
        sh.stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read");
        assert!(sh.wait().expect("wait").success());
        out.trim().parse().expect("the sleep's PID")
    }

    #[test]
    fn stat_is_parsed_past_a_command_name_with_parentheses() {
        let mut fields: Vec<String> = (0..30).map(|i| i.to_string()).collect();
        fields[0] = "S".into();
        fields[19] = "777".into();
        let text = format!("42 (a) (b) c) {}\n", fields.join(" "));
        // the last ')' ends the name: state S, start time 777
        assert_eq!(parse_stat(&text), Some(('S', 777)));
        assert_eq!(parse_stat("42 (short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn a_live_process_that_is_not_our_child_is_adopted_and_its_end_seen() {
        let pid = orphan_sleep();
        let id = ProcessId::of(pid).expect("the sleep runs");
        assert!(id.is_alive());
        let mut w = Watched::adopt(id).expect("adopted");
        assert!(w.child.is_none(), "not ours to wait for");
        assert_eq!(w.exited(), None, "the sleep still runs");
        w.signal(libc::SIGTERM).expect("signal through the pidfd");
        assert_eq!(w.wait_for(Duration::from_secs(10)), Some(Exit::Unknown));
        assert!(!id.is_alive());
    }

    #[test]
    fn a_recycled_pid_is_refused_by_its_start_time() {
        let pid = orphan_sleep();
        let real = ProcessId::of(pid).expect("runs");
        let recorded = ProcessId {
            pid,
            start_time: real.start_time + 1,
        };
        assert!(!recorded.is_alive(), "another process's PID taken for it");
        match Watched::adopt(recorded) {
            Err(ProcessError::Recycled {
                pid: p,
                recorded: r,
                found,
            }) => assert_eq!((p, r, found), (pid, real.start_time + 1, real.start_time)),
            other => panic!("adopted a recycled PID: {other:?}"),
        }
        let mut w = Watched::adopt(real).expect("the real one");
        w.signal(libc::SIGKILL).expect("kill");
        assert!(w.wait_for(Duration::from_secs(10)).is_some());
    }

    #[test]
    fn a_process_that_has_ended_is_not_adopted() {
        let mut child = Command::new("/bin/true").spawn().expect("true");
        let id = ProcessId::of(child.id()).expect("stat before the reap");
        child.wait().expect("reaped");
        assert!(!id.is_alive());
        match Watched::adopt(id) {
            Err(ProcessError::Gone { pid }) => assert_eq!(pid, id.pid),
            other => panic!("adopted a process that ended: {other:?}"),
        }
    }

    #[test]
    fn our_child_is_reaped_with_its_exit_status() {
        let child = Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("sh");
        let mut w = Watched::spawned(child).expect("watched");
        assert!(w.child.is_some());
        let exit = w.wait_for(Duration::from_secs(10)).expect("ended");
        assert!(
            matches!(exit, Exit::Status(s) if s.code() == Some(3)),
            "{exit}"
        );
        assert_eq!(w.exited(), Some(exit), "the status is kept");
    }

    #[test]
    fn stop_all_terminates_and_kills_what_ignores_sigterm() {
        let spawn = |script: &str| {
            let child = Command::new("/bin/sh")
                .args(["-c", script])
                .spawn()
                .expect("sh");
            Watched::spawned(child).expect("watched")
        };
        let mut polite = spawn("exec sleep 30");
        let mut stubborn = spawn("trap '' TERM; exec sleep 30");
        // give the shell time to install its trap before the SIGTERM
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        let killed = stop_all(
            &mut [&mut polite, &mut stubborn],
            Duration::from_millis(500),
        );
        assert_eq!(killed, vec![stubborn.pid()]);
        assert!(start.elapsed() >= Duration::from_millis(500));
        let signal = |w: &mut Watched| match w.exited() {
            Some(Exit::Status(s)) => std::os::unix::process::ExitStatusExt::signal(&s),
            other => panic!("{other:?}"),
        };
        assert_eq!(signal(&mut polite), Some(libc::SIGTERM));
        assert_eq!(signal(&mut stubborn), Some(libc::SIGKILL));
    }
}
