//! splitvisor-net serves a tap someone else made, from the queue descriptors it inherits
//! (`--tap-fd`, as svctl's supervisor starts it: issue 26 item 3), with no privilege at all
//! from its first instruction: started as `nobody` with no capabilities, it serves the tap's
//! two queues over vhost-user; the same process given the tap's name instead cannot use it. The tap lives in a network namespace of the test's own.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::blk_process::bin;
use integration_tests::proc_status;
use integration_tests::scratch::Scratch;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

const NOBODY: u32 = 65534;
const TAP: &str = "svfd0";

/// `splitvisor-net` as `nobody` from the start (no capabilities), its stderr piped, with the
/// descriptors `keep` left open across exec.
fn net_as_nobody(dir: &Scratch, tag: &str, args: &[String], keep: &[OwnedFd]) -> Child {
    let mut cmd = Command::new(bin("splitvisor-net"));
    cmd.args(args)
        .arg("--socket")
        .arg(dir.path(&format!("{tag}.sock")))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let raw: Vec<i32> = keep.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: only async-signal-safe calls (fcntl, setgroups, setresgid, setresuid) on
    // values the closure owns; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &raw {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setgroups(0, std::ptr::null()) < 0
                || libc::setresgid(NOBODY, NOBODY, NOBODY) < 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("splitvisor-net starts")
}

fn stderr_of(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut log);
    log
}

#[test]
fn an_unprivileged_net_backend_serves_the_tap_queues_it_inherits() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test makes a tap (as svctl does), which needs root"
    );
    let dir = Scratch::new("tap-fd");
    // nobody creates its sockets here
    std::fs::set_permissions(dir.dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare takes flags only; CLONE_NEWNET moves this thread alone (and the
            // processes it starts) into a new network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let tap = tap::Tap::open(TAP, 2, true).expect("the tap is made");
            tap.set_mtu(1500).expect("mtu");
            tap.bring_up().expect("up");
            let fds = tap.into_fds();
            let fd_args: Vec<String> = fds
                .iter()
                .flat_map(|f| ["--tap-fd".to_string(), f.as_raw_fd().to_string()])
                .collect();
            let mut served = net_as_nobody(&dir, "fds", &fd_args, &fds);
            // by name, the same unprivileged process may not attach to the tap
            let by_name = net_as_nobody(
                &dir,
                "name",
                &["--tap".into(), TAP.into(), "--queues".into(), "2".into()],
                &[],
            );
            let socket = dir.path("fds.sock");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !socket.exists() && Instant::now() < deadline {
                assert!(served.try_wait().unwrap().is_none(), "the backend exited");
                std::thread::sleep(Duration::from_millis(10));
            }
            let field = |key| proc_status::process_field(served.id(), key);
            let status = [field("Uid"), field("CapEff"), field("CapPrm")];
            // it serves: a frontend gets its features and both queue pairs
            let frontend = Frontend::connect(&socket, 1);
            let queues = frontend.and_then(|mut f| {
                f.set_owner()?;
                let features = f.get_features()?;
                f.set_features(features)?;
                let protocol = f.get_protocol_features()?;
                f.set_protocol_features(protocol)?;
                Ok((features, f.get_queue_num()))
            });
            let by_name_exit = {
                let mut c = by_name;
                let t = Instant::now();
                while c.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let exited = c.try_wait().unwrap();
                (exited, stderr_of(c))
            };
            let log = stderr_of(served);
            assert!(socket.exists(), "never served: {log}");
            let uid: Vec<&str> = status[0].split_whitespace().collect();
            assert_eq!(uid, ["65534"; 4], "{log}");
            assert_eq!(status[1], "0000000000000000", "CapEff");
            assert_eq!(status[2], "0000000000000000", "CapPrm");
            let (features, queue_num) = queues.expect("vhost-user handshake");
            assert_ne!(features, 0);
            // two pairs and the control queue
            assert_eq!(queue_num.expect("GET_QUEUE_NUM"), 5, "two pairs: {log}");
            assert!(
                log.contains(&format!("serving tap {TAP} (2 queue pair(s)")),
                "{log}"
            );
            let (exit, refused) = by_name_exit;
            assert!(exit.is_some_and(|e| !e.success()), "{refused}");
            // refused at /dev/net/tun (mode 0600 here) or, where anyone may open it, at the
            // attach (the tap has no owner)
            assert!(
                refused.contains(&format!("cannot attach to tap {TAP}"))
                    || refused.contains("cannot open /dev/net/tun"),
                "{refused}"
            );
        });
    });
}
