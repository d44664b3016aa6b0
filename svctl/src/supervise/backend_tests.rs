//! The backend state machine against real processes: the fake backend is this test binary
//! itself, run as one ignored test (`fake_backend`) that sends READY=1 and sleeps.

use std::os::unix::process::ExitStatusExt;

use super::super::TempRuntime;
use super::*;
use crate::process::{poll_readable, Exit};

/// Not a test: the fake backend the tests below start (this binary with `--exact` and
/// `--ignored`). READY=1 to NOTIFY_SOCKET, then sleep until a signal ends it. Only acts when
/// started by these tests (its notify socket is in one of their runtime dirs).
#[test]
#[ignore = "a fake backend process for the supervisor's tests, not a test"]
fn fake_backend() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if !socket.to_string_lossy().contains("/svctl-supervise-") {
        return;
    }
    let s = UnixDatagram::unbound().expect("datagram socket");
    s.send_to(b"READY=1", &socket).expect("notify");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Not a test: [`fake_backend`] that ignores SIGTERM (a backend that does not drain).
#[test]
#[ignore = "a fake backend process for the supervisor's tests, not a test"]
fn fake_backend_ignoring_sigterm() {
    // SAFETY: setting SIGTERM's disposition to SIG_IGN; no handler runs.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    fake_backend();
}

/// The fake backend `which` ([`fake_backend`] or [`fake_backend_ignoring_sigterm`]): its
/// program and arguments.
pub(in crate::supervise) fn fake(which: &str) -> (PathBuf, Vec<String>) {
    let exe = std::env::current_exe().expect("the test binary");
    let test = format!("supervise::backend::tests::{which}");
    let args = ["--exact", &test, "--ignored", "--test-threads=1", "-q"];
    (exe, args.map(String::from).to_vec())
}

/// Kills what a test started, even when it fails half-way.
struct Cleanup(Vec<Backend>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for b in self.0.drain(..) {
            if let Some(mut p) = b.into_process() {
                let _ = p.signal(libc::SIGKILL);
                let _ = p.wait_for(Duration::from_secs(5));
            }
        }
    }
}

fn started(rt: &Runtime, which: &str) -> Cleanup {
    let (program, args) = fake(which);
    Cleanup(vec![
        Backend::start(rt, "blk0", program, args, None).expect("started")
    ])
}

/// Wait until its process has ended, then tick until it runs again (bounded).
fn tick_until_running(rt: &Runtime, b: &mut Backend) {
    if let Some(fd) = b.pidfd() {
        let _ = poll_readable(&[fd], Duration::from_secs(10));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        b.tick(rt, Instant::now());
        if matches!(b.state, State::Running(_)) && !b.record().down {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("not running again");
}

#[test]
fn a_backend_starts_in_its_own_session_and_is_awaited_on_ready() {
    let tmp = TempRuntime::new();
    let c = started(&tmp.0, "fake_backend");
    let pid = c.0[0].record().pid;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    // field 6 (session) is fields[3] after the command name
    assert_eq!(fields[3], pid.to_string(), "not a session leader: {stat}");
    assert!(ProcessId::of(pid).expect("runs").is_alive());
    assert!(
        !tmp.0.dir.join("notify.sock").exists(),
        "notify socket left"
    );
}

#[test]
fn a_child_gets_its_argv_and_the_log_for_its_output() {
    let tmp = TempRuntime::new();
    let log = log_file(&tmp.0, "child").expect("log");
    let script = "echo \"$0 $1\"; echo to-stderr >&2";
    let args = ["-c", script, "first", "second"].map(String::from);
    let mut cmd = command(Path::new("/bin/sh"), &args, log).expect("command");
    assert_eq!(cmd.get_program(), "/bin/sh");
    assert!(cmd.get_args().eq(args.iter().map(std::ffi::OsStr::new)));
    let status = cmd.status().expect("run");
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(tmp.0.dir.join("child.log")).expect("log");
    assert_eq!(text, "first second\nto-stderr\n");
}

#[test]
fn a_backend_that_dies_before_ready_is_reported_with_its_last_words() {
    let tmp = TempRuntime::new();
    let args = ["-c", "echo boom >&2; exit 7"].map(String::from).to_vec();
    let err = Backend::start(&tmp.0, "net0", "/bin/sh".into(), args, None)
        .err()
        .expect("refused");
    assert_eq!(
        err,
        "net0 backend (/bin/sh) exited with exit status: 7 before it was ready: boom"
    );
}

#[test]
fn deaths_are_restarted_with_a_growing_delay_until_the_limit() {
    let mut r = Restarts::default();
    let t = Instant::now();
    let s = Duration::from_secs;
    assert_eq!(r.on_death(t), Decision::RestartAt(t));
    let at = |d: Duration, ms: u64| Decision::RestartAt(t + d + Duration::from_millis(ms));
    assert_eq!(r.on_death(t + s(1)), at(s(1), 250));
    assert_eq!(r.on_death(t + s(2)), at(s(2), 500));
    assert_eq!(r.on_death(t + s(3)), at(s(3), 1000));
    assert_eq!(r.on_death(t + s(4)), Decision::GiveUp, "5th death in 30 s");
    // deaths older than the window are forgotten: 31 s after the first, four remain
    let mut r = Restarts::default();
    for i in 0..4 {
        assert!(matches!(r.on_death(t + s(i)), Decision::RestartAt(_)));
    }
    assert!(matches!(r.on_death(t + s(31)), Decision::RestartAt(_)));
    // an operator's restart forgets them all
    r.forget_deaths();
    assert_eq!(r.on_death(t + s(32)), Decision::RestartAt(t + s(32)));
}

#[test]
fn a_killed_backend_is_started_again_and_counted() {
    let tmp = TempRuntime::new();
    let rt = &tmp.0;
    let mut c = started(rt, "fake_backend");
    let b = &mut c.0[0];
    let first = b.record();
    // SAFETY: kill of our fake backend child, not yet reaped.
    unsafe { libc::kill(first.pid as i32, libc::SIGKILL) };
    tick_until_running(rt, b);
    let after = b.record();
    assert_ne!(after.pid, first.pid);
    assert_eq!((after.restarts, after.planned_restarts), (1, 0));
    assert_eq!((&after.program, &after.args), (&first.program, &first.args));
}

#[test]
fn a_backend_that_keeps_dying_is_left_down() {
    let tmp = TempRuntime::new();
    let rt = &tmp.0;
    let args = ["-c", "exit 1"].map(String::from).to_vec();
    let rec = BackendRecord {
        down: false,
        pid: u32::MAX, // no such process: adopting it fails, it is started again
        restarts: 0,
        planned_restarts: 0,
        start_time: 0,
        program: "/bin/sh".into(),
        args,
    };
    let mut b = Backend::adopt("blk0", &rec, None);
    let t = Instant::now();
    // each start fails (exits before READY=1); time is given as far enough apart for the backoff
    for i in 0..RESTART_LIMIT as u64 {
        assert!(b.tick(rt, t + Duration::from_secs(2 * i)), "tick {i}");
    }
    assert!(b.record().down, "not left down");
    assert!(
        !b.tick(rt, t + Duration::from_secs(60)),
        "a backend left down was started"
    );
}

#[test]
fn planned_restarts_are_not_deaths() {
    let tmp = TempRuntime::new();
    let rt = &tmp.0;
    let mut c = started(rt, "fake_backend");
    let b = &mut c.0[0];
    let mut pids = vec![b.record().pid];
    for _ in 0..RESTART_LIMIT + 1 {
        let report = b.planned_restart(rt, DRAIN_LIMIT).expect("restarted");
        assert_eq!(report.old_pid, *pids.last().expect("pid"));
        assert!(!report.killed, "{report:?}");
        assert!(report.restart_ms >= report.drain_ms, "{report:?}");
        assert!(ProcessId::of(report.new_pid).expect("runs").is_alive());
        pids.push(report.new_pid);
    }
    let rec = b.record();
    assert!(!rec.down);
    assert_eq!((rec.restarts, rec.planned_restarts), (0, 6));
    assert_eq!(rec.pid, *pids.last().expect("pid"));
}

#[test]
fn a_backend_that_does_not_drain_is_killed_and_started_again() {
    let tmp = TempRuntime::new();
    let rt = &tmp.0;
    let mut c = started(rt, "fake_backend_ignoring_sigterm");
    let b = &mut c.0[0];
    let old = b.record().pid;
    let report = b
        .planned_restart(rt, Duration::from_millis(300))
        .expect("restarted");
    assert!(report.killed, "{report:?}");
    assert!(report.drain_ms >= 300, "{report:?}");
    assert_eq!(report.old_pid, old);
    assert_ne!(report.new_pid, old);
}

#[test]
fn a_running_backend_is_adopted_and_one_left_down_is_started_by_a_planned_restart() {
    let tmp = TempRuntime::new();
    let rt = &tmp.0;
    let mut c = started(rt, "fake_backend");
    let rec = c.0[0].record();
    // a new supervisor takes it over: same process, its counts kept
    let mut adopted = Backend::adopt(
        "blk0",
        &BackendRecord {
            restarts: 3,
            ..rec.clone()
        },
        None,
    );
    assert!(adopted.pidfd().is_some(), "not watched");
    assert!(!adopted.tick(rt, Instant::now()), "it runs");
    assert_eq!(adopted.record().pid, rec.pid);
    assert_eq!(adopted.record().restarts, 3);
    // its death is seen through the pidfd although it is not the adopter's child
    let mut p = c.0.remove(0).into_process().expect("process");
    p.signal(libc::SIGKILL).expect("kill");
    match p.wait_for(Duration::from_secs(10)) {
        Some(Exit::Status(s)) => assert_eq!(s.signal(), Some(libc::SIGKILL)),
        other => panic!("{other:?}"),
    }
    tick_until_running(rt, &mut adopted);
    assert_eq!(adopted.record().restarts, 4);
    c.0.push(adopted);
    // left down: a planned restart starts it
    let down = BackendRecord {
        down: true,
        ..c.0[0].record()
    };
    let mut b = Backend::adopt("blk0", &down, None);
    assert!(b.pidfd().is_none() && b.record().down);
    let report = b.planned_restart(rt, DRAIN_LIMIT).expect("started");
    assert!(!b.record().down);
    assert_eq!(
        report.old_pid, down.pid,
        "nothing stopped: reported as it was"
    );
    c.0.push(b);
}
