//! The supervisor's backends. Starting one: its own session (so that nothing the supervisor's
//! death does to its process group reaches it), its output appended to `<runtime>/NAME.log`,
//! awaited on its sd_notify READY=1. A backend is a small state machine:
//!
//! ```text
//!   Running ──died──► Waiting{at} ──at passed: started──► Running
//!      │                  │  └──start failed──► Waiting (later) / Down
//!      │                  └── RESTART_LIMIT deaths within RESTART_WINDOW ──► Down
//!      └──planned restart (SIGTERM, drained, started again; no death counted)──► Running
//! ```
//!
//! A death is restarted at once, the next ones after a growing delay (backoff); the
//! [`RESTART_LIMIT`]th death within [`RESTART_WINDOW`] leaves it down with one log line until
//! `svctl backend-restart` starts it again.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::control::RestartReport;
use super::tail;
use super::tap_maker::{self, TapMaker};
use crate::domain::Runtime;
use crate::process::{ProcessId, Watched};
use crate::record::BackendRecord;

const READY_LIMIT: Duration = Duration::from_secs(20);
/// How long a planned restart waits for the backend to finish its in-flight requests and exit
/// after SIGTERM (then it is killed; the next process resubmits what it left in flight).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// The death within [`RESTART_WINDOW`] that leaves a backend down.
pub const RESTART_LIMIT: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(30);
/// The delay before the second restart within the window; doubled for each one after.
const BACKOFF_STEP: Duration = Duration::from_millis(250);

/// A process's log in the runtime dir, appended to (a restarted process keeps its history).
pub fn log_file(rt: &Runtime, what: &str) -> Result<File, String> {
    let path = rt.dir.join(format!("{what}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// How the supervisor starts a process of the domain: stdin from /dev/null, stdout and stderr
/// to its log file (never a pipe that would break when the supervisor dies), in a session of
/// its own. No parent-death signal: the vmm and the backends outlive a supervisor that dies.
pub fn command(program: &Path, args: &[String], log: File) -> Result<Command, String> {
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(err);
    // SAFETY: setsid is async-signal-safe and only affects the child. In a session of its own
    // the child's process group is never orphaned by the supervisor's death (an orphaned group
    // with a stopped member gets SIGHUP, which ends the vmm).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Start one backend and wait for its READY=1 (or its death, or the limit). A net backend
/// gets its tap's queues from `tap` (inherited descriptors named by `--tap-fd`).
fn start_process(
    rt: &Runtime,
    what: &str,
    program: &Path,
    args: &[String],
    tap: Option<&mut TapMaker>,
) -> Result<Watched, String> {
    let fds = match tap {
        Some(t) => t.fds()?,
        None => Vec::new(),
    };
    let notify_path = rt.dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).map_err(|e| format!("notify socket: {e}"))?;
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let mut cmd = command(program, args, log_file(rt, what)?)?;
    cmd.env("NOTIFY_SOCKET", &notify_path);
    if !fds.is_empty() {
        cmd.args(tap_maker::fd_args(&fds));
        let raw = tap_maker::raw(&fds);
        // SAFETY: fcntl is async-signal-safe; the closure only reads the numbers it owns
        // (no allocation). The descriptors stay open in the parent until after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &raw {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let program_name = program.display();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program_name}: {e}"))?;
    drop(fds); // the child has its copies; ours are the tap maker's
    let mut proc = Watched::spawned(child).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let result = loop {
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break Ok(());
            }
        }
        if let Some(exit) = proc.exited() {
            break Err(format!(
                "{what} backend ({program_name}) exited with {exit} before it was ready: {}",
                tail(&rt.dir.join(format!("{what}.log")))
            ));
        }
        if start.elapsed() > READY_LIMIT {
            let _ = proc.signal(libc::SIGKILL);
            let _ = proc.wait_for(Duration::from_secs(2));
            break Err(format!(
                "{what} backend ({program_name}) was not ready within {READY_LIMIT:?}"
            ));
        }
    };
    let _ = std::fs::remove_file(&notify_path);
    result?;
    tracing::info!(what, pid = proc.pid(), "backend ready");
    Ok(proc)
}

/// What to do about a backend that died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RestartAt(Instant),
    GiveUp,
}

/// A backend's restarts: how many of each kind, and the recent deaths (for the backoff and
/// the limit).
#[derive(Debug, Default)]
pub struct Restarts {
    pub count: u64,
    pub planned: u64,
    deaths: VecDeque<Instant>,
}

impl Restarts {
    /// A death at `now`: restart it (when), or leave it down.
    pub fn on_death(&mut self, now: Instant) -> Decision {
        self.deaths
            .retain(|t| now.saturating_duration_since(*t) < RESTART_WINDOW);
        self.deaths.push_back(now);
        let n = self.deaths.len();
        if n >= RESTART_LIMIT {
            return Decision::GiveUp;
        }
        let delay = match n {
            0 | 1 => Duration::ZERO,
            n => BACKOFF_STEP * (1 << (n - 2)),
        };
        Decision::RestartAt(now + delay)
    }

    /// An operator restarted it: the deaths before no longer count.
    pub fn forget_deaths(&mut self) {
        self.deaths.clear();
    }
}

enum State {
    Running(Watched),
    /// Died (or could not be started again): started again at `at`.
    Waiting {
        at: Instant,
    },
    /// Died [`RESTART_LIMIT`] times within [`RESTART_WINDOW`]: left down.
    Down,
}

/// One backend the supervisor keeps running.
pub struct Backend {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    state: State,
    /// The last process, for the record while none runs.
    last: ProcessId,
    restarts: Restarts,
    /// A net backend's tap, made and held here.
    tap: Option<TapMaker>,
}

impl Backend {
    /// Start it (the domain is starting).
    pub fn start(
        rt: &Runtime,
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        mut tap: Option<TapMaker>,
    ) -> Result<Backend, String> {
        let proc = start_process(rt, name, &program, &args, tap.as_mut())?;
        Ok(Backend {
            name: name.into(),
            program,
            args,
            last: proc.id,
            state: State::Running(proc),
            restarts: Restarts::default(),
            tap,
        })
    }

    /// Take over a backend a supervisor before us started: watched if it still runs, else
    /// started again at once.
    pub fn adopt(name: &str, rec: &BackendRecord, tap: Option<TapMaker>) -> Backend {
        let state = if rec.down {
            State::Down
        } else {
            match Watched::adopt(rec.id()) {
                Ok(proc) => {
                    tracing::info!(what = name, pid = rec.pid, "backend adopted");
                    State::Running(proc)
                }
                Err(e) => {
                    tracing::warn!(what = name, "backend not adopted ({e}): starting it again");
                    State::Waiting { at: Instant::now() }
                }
            }
        };
        Backend {
            name: name.into(),
            program: rec.program.clone(),
            args: rec.args.clone(),
            state,
            last: rec.id(),
            restarts: Restarts {
                count: rec.restarts,
                planned: rec.planned_restarts,
                deaths: VecDeque::new(),
            },
            tap,
        }
    }

    /// Its pidfd while it runs, for `poll`.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        match &self.state {
            State::Running(p) => Some(p.pidfd()),
            _ => None,
        }
    }

    /// When it is due to be started again.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { at } => Some(at),
            _ => None,
        }
    }

    /// Look at it: a death is noticed, a restart that is due is done. Whether anything changed.
    pub fn tick(&mut self, rt: &Runtime, now: Instant) -> bool {
        match &mut self.state {
            State::Running(p) => match p.exited() {
                Some(exit) => {
                    self.died(&format!("died ({exit})"), now);
                    true
                }
                None => false,
            },
            State::Waiting { at } if *at <= now => {
                match start_process(rt, &self.name, &self.program, &self.args, self.tap.as_mut()) {
                    Ok(p) => {
                        self.restarts.count += 1;
                        tracing::warn!(
                            what = %self.name, pid = p.pid(), restarts = self.restarts.count,
                            "backend started again on its socket"
                        );
                        self.last = p.id;
                        self.state = State::Running(p);
                    }
                    Err(e) => self.died(&format!("could not be started again: {e}"), now),
                }
                true
            }
            State::Waiting { .. } | State::Down => false,
        }
    }

    fn died(&mut self, why: &str, now: Instant) {
        let what = &self.name;
        match self.restarts.on_death(now) {
            Decision::GiveUp => {
                tracing::error!(
                    "backend {what} {why}: it died {RESTART_LIMIT} times within \
                     {RESTART_WINDOW:?}, left down (`svctl backend-restart` starts it again)"
                );
                self.state = State::Down;
            }
            Decision::RestartAt(at) => {
                let delay_ms = at.saturating_duration_since(now).as_millis() as u64;
                tracing::warn!(what = %what, delay_ms, "backend {why}: starting it again");
                self.state = State::Waiting { at };
            }
        }
    }

    /// A planned restart: SIGTERM (the backend finishes its in-flight requests and exits;
    /// SIGKILL after `drain_limit`), then the same program and arguments again on the same
    /// socket. Not a death: the restart limit is not touched, and one left down is started.
    pub fn planned_restart(
        &mut self,
        rt: &Runtime,
        drain_limit: Duration,
    ) -> Result<RestartReport, String> {
        let what = self.name.clone();
        let t0 = Instant::now();
        let old_pid = self.last.pid;
        let mut killed = false;
        if let State::Running(p) = &mut self.state {
            if p.exited().is_none() {
                tracing::info!(what = %what, pid = old_pid, "planned restart: SIGTERM");
                let _ = p.signal(libc::SIGTERM);
                if p.wait_for(drain_limit).is_none() {
                    tracing::warn!(
                        what = %what,
                        "did not exit within {drain_limit:?} of SIGTERM: killed (the next \
                         process resubmits its in-flight requests)"
                    );
                    let _ = p.signal(libc::SIGKILL);
                    killed = true;
                    if p.wait_for(Duration::from_secs(2)).is_none() {
                        return Err(format!(
                            "backend {what} (pid {old_pid}) did not end even after SIGKILL"
                        ));
                    }
                }
            }
        }
        let drain_ms = t0.elapsed().as_millis() as u64;
        self.restarts.forget_deaths();
        match start_process(rt, &what, &self.program, &self.args, self.tap.as_mut()) {
            Ok(p) => {
                self.restarts.planned += 1;
                let report = RestartReport {
                    device: what,
                    old_pid,
                    new_pid: p.pid(),
                    drain_ms,
                    restart_ms: t0.elapsed().as_millis() as u64,
                    killed,
                };
                tracing::info!(?report, "planned restart done");
                self.last = p.id;
                self.state = State::Running(p);
                Ok(report)
            }
            Err(e) => {
                self.died(&format!("could not be started again: {e}"), Instant::now());
                Err(format!(
                    "backend {what} was stopped but could not be started again \
                     (the supervisor keeps trying): {e}"
                ))
            }
        }
    }

    pub fn record(&self) -> BackendRecord {
        BackendRecord {
            down: matches!(self.state, State::Down),
            pid: self.last.pid,
            restarts: self.restarts.count,
            planned_restarts: self.restarts.planned,
            start_time: self.last.start_time,
            program: self.program.clone(),
            args: self.args.clone(),
        }
    }

    /// Its process, if one runs (to stop it).
    pub fn into_process(self) -> Option<Watched> {
        match self.state {
            State::Running(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
pub(super) mod tests;
