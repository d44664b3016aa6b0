//! Every splitvisor backend runs under its seccomp filter (issue 26 item 2), on the host, with
//! real processes: every thread of a serving splitvisor-blk, -net and -balloon shows
//! `Seccomp: 2` in /proc, and a system call outside the filter (the test-only trigger
//! `SPLITVISOR_SECCOMP_SELFTEST`) kills the process with SIGSYS under `--seccomp on`, is let
//! through under `log` and `off`. (The vmm's threads: api_host.rs; in a running VM with all
//! three backends: the sandbox's svctl_lifecycle.rs.) And the rest of a backend's
//! confinement: another user (`--user`), and Landlock's file rules (`--landlock`).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::blk_process::bin;
use integration_tests::proc_status;
use integration_tests::scratch::Scratch;

/// A scratch directory holding a 1 MiB raw image.
fn scratch(tag: &str) -> Scratch {
    let dir = Scratch::new(&format!("seccomp-{tag}"));
    std::fs::write(dir.path("disk.raw"), vec![0u8; 1 << 20]).unwrap();
    dir
}

/// A path in `dir`, as an argument.
fn arg(dir: &Scratch, name: &str) -> String {
    dir.path(name).display().to_string()
}

/// The command that starts backend `which` serving in `dir` (net in a network namespace of
/// its own, so that its tap never touches the host's network).
fn backend(which: &str, dir: &Scratch) -> Command {
    let socket = arg(dir, "dev.sock");
    let mut cmd = match which {
        "blk" => {
            let mut c = Command::new(bin("splitvisor-blk"));
            c.args(["--image", &arg(dir, "disk.raw"), "--format", "raw"]);
            c
        }
        "net" => {
            let mut c = Command::new("unshare");
            c.arg("--net").arg(bin("splitvisor-net"));
            c.args(["--create-tap", "svtap0"]);
            c
        }
        _ => {
            let mut c = Command::new(bin("splitvisor-balloon"));
            c.args(["--control", &arg(dir, "control.sock")]);
            c
        }
    };
    cmd.args([
        "--socket",
        &socket,
        "--stats-socket",
        &arg(dir, "stats.sock"),
    ]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Wait until `path` exists or `child` exits; whether it exists.
fn wait_for(path: &Path, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The backend's own pid (net runs under `unshare`, which execs it: same pid).
fn serving(which: &str, dir: &Scratch) -> Child {
    let mut child = backend(which, dir).spawn().expect("the backend starts");
    let up = wait_for(&dir.path("stats.sock"), &mut child);
    if !up {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "{which} did not come up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child
}

#[test]
fn every_thread_of_every_backend_runs_under_its_filter() {
    for which in ["blk", "net", "balloon"] {
        let dir = scratch(which);
        let mut child = serving(which, &dir);
        // the frontend-facing threads start with a connection; the rest exist already
        let modes = proc_status::thread_field(child.id(), "Seccomp");
        let _ = child.kill();
        let _ = child.wait();
        assert!(modes.len() >= 2, "{which}: threads {modes:?}");
        for (comm, mode) in &modes {
            assert_eq!(
                mode.as_deref(),
                Some("2"),
                "{which}: thread {comm}: {mode:?}"
            );
        }
        eprintln!("{which}: {} threads, all Seccomp: 2 {modes:?}", modes.len());
    }
}

#[test]
fn a_system_call_outside_the_filter_kills_the_backend() {
    for which in ["blk", "net", "balloon"] {
        let dir = scratch(&format!("kill-{which}"));
        let mut cmd = backend(which, &dir);
        cmd.env("SPLITVISOR_SECCOMP_SELFTEST", "1");
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{which} was not killed");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{which}: {status:?}");
        // `log` and `off` let it through: the backend serves
        for mode in ["log", "off"] {
            let dir = scratch(&format!("{mode}-{which}"));
            let mut cmd = backend(which, &dir);
            cmd.env("SPLITVISOR_SECCOMP_SELFTEST", "1")
                .args(["--seccomp", mode]);
            let mut child = cmd.spawn().unwrap();
            let up = wait_for(&dir.path("stats.sock"), &mut child);
            let _ = child.kill();
            let _ = child.wait();
            assert!(up, "{which} --seccomp {mode} serves");
        }
    }
}

#[test]
fn with_user_a_backend_runs_unprivileged_and_cannot_open_host_secrets() {
    use std::io::Read;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test starts the backends as root, as svctl and the units do"
    );
    for which in ["blk", "net", "balloon"] {
        let dir = scratch(&format!("user-{which}"));
        let mut cmd = backend(which, &dir);
        cmd.args(["--user", "nobody"])
            .env("SPLITVISOR_SELFTEST_OPEN", "/etc/shadow")
            .env("RUST_LOG", "info");
        let mut child = cmd.spawn().unwrap();
        let up = wait_for(&dir.path("stats.sock"), &mut child);
        // the stats socket comes before readiness, and the switch just before READY=1
        std::thread::sleep(Duration::from_millis(200));
        let field = |key| proc_status::process_field(child.id(), key);
        let (uid, cap_eff, cap_prm) = (field("Uid"), field("CapEff"), field("CapPrm"));
        let uid: Vec<&str> = uid.split_whitespace().collect();
        let _ = child.kill();
        let _ = child.wait();
        let mut log = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(up, "{which} serves as nobody: {log}");
        assert!(
            !uid.is_empty() && uid.iter().all(|u| *u != "0"),
            "{which}: Uid {uid:?}"
        );
        assert_eq!(cap_eff, "0000000000000000", "{which}: CapEff");
        assert_eq!(cap_prm, "0000000000000000", "{which}: CapPrm");
        assert!(
            log.contains("selftest: open /etc/shadow: refused: Permission denied"),
            "{which}: {log}"
        );
    }
}

#[test]
fn with_landlock_even_a_root_backend_reaches_no_host_file_and_still_cleans_up() {
    use std::io::Read;
    for which in ["blk", "net", "balloon"] {
        for landlock in ["on", "off"] {
            let dir = scratch(&format!("landlock-{landlock}-{which}"));
            let mut cmd = backend(which, &dir);
            // as root, only the file rules can refuse it
            cmd.args(["--landlock", landlock])
                .env("SPLITVISOR_SELFTEST_OPEN", "/etc/shadow")
                .env("RUST_LOG", "info");
            let mut child = cmd.spawn().unwrap();
            let up = wait_for(&dir.path("stats.sock"), &mut child);
            // the stats thread, started after the rules, answers
            let mut stats = String::new();
            let answered = up
                && std::os::unix::net::UnixStream::connect(dir.path("stats.sock"))
                    .and_then(|mut s| s.read_to_string(&mut stats))
                    .is_ok();
            // SIGTERM: it removes its sockets (a right the rules keep) and exits
            // SAFETY: kill with a pid we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            let mut log = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut log);
            assert!(
                up && answered,
                "{which} --landlock {landlock} serves: {log}"
            );
            let left: Vec<_> = ["dev.sock", "stats.sock", "control.sock"]
                .into_iter()
                .filter(|f| dir.path(f).exists())
                .collect();
            assert!(left.is_empty(), "{which}: left behind {left:?}: {log}");
            let expected = match landlock {
                "on" => "selftest: open /etc/shadow: refused: Permission denied",
                _ => "selftest: open /etc/shadow: opened",
            };
            assert!(
                log.contains(expected),
                "{which} --landlock {landlock}: {log}"
            );
            if landlock == "on" {
                assert!(log.contains("landlock ABI"), "{which}: {log}");
            }
        }
    }
}
