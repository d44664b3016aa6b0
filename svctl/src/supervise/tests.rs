//! The supervisor's loop against real processes: a "vmm" that is not its child (an orphaned
//! `sleep`), fake backends (`backend_tests.rs`), SIGKILLs at each step.

use std::time::{Duration, Instant};

use super::backend::tests::fake;
use super::*;
use crate::process::ProcessId;

#[test]
fn binaries_are_found_beside_svctl_else_in_path() {
    let tmp = TempRuntime::new();
    let dir = tmp.0.dir.clone();
    std::fs::write(dir.join("splitvisor-blk"), "").expect("file");
    assert_eq!(
        bin_in(Some(dir.clone()), "splitvisor-blk"),
        dir.join("splitvisor-blk")
    );
    assert_eq!(
        bin_in(Some(dir), "splitvisor-net"),
        PathBuf::from("splitvisor-net")
    );
    assert_eq!(bin_in(None, "splitvisor"), PathBuf::from("splitvisor"));
}

/// Wait (bounded) until `cond` holds for the record.
fn record_until(rt: &Runtime, what: &str, cond: impl Fn(&Record) -> bool) -> Record {
    let start = Instant::now();
    loop {
        if let Ok(Some(rec)) = Record::read(&rt.backends_status()) {
            if cond(&rec) {
                return rec;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `sleep` that is not our child, as a recorded process.
fn orphan_sleep() -> ProcessId {
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("sh");
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    ProcessId::of(pid).expect("the sleep runs")
}

#[test]
fn an_adopted_domain_is_watched_its_backends_restarted_and_stopped_when_the_vmm_ends() {
    let tmp = TempRuntime::new();
    let rt = &tmp.0;
    // what a supervisor that died left: a running vmm and two backends, recorded
    let vmm = orphan_sleep();
    let (program, args) = fake("fake_backend");
    let blk = Backend::start(rt, "blk0", program.clone(), args.clone(), None).expect("blk0");
    let net = Backend::start(rt, "net0", program, args, None).expect("net0");
    let rec = Record {
        backends: [blk.record(), net.record()]
            .into_iter()
            .zip(["blk0", "net0"])
            .map(|(b, n)| (n.to_string(), b))
            .collect(),
        vmm: Some(vmm),
        supervisor: None,
    };
    let mut old_blk = blk.into_process().expect("blk0 runs");
    let mut old_net = net.into_process().expect("net0 runs");
    let me = ProcessId::of(std::process::id()).expect("our own stat");
    std::thread::scope(|s| {
        let watching = s.spawn(|| {
            let vmm = Watched::adopt(vmm).expect("the vmm is adopted");
            adopt(rt, &rec, vmm, me, None)
        });
        let first = record_until(rt, "the record names the new supervisor", |r| {
            r.supervisor == Some(me) && r.vmm == Some(vmm)
        });
        assert_eq!(
            first.backends, rec.backends,
            "the backends are kept as they run"
        );
        // a backend the new supervisor did not start dies: it is started again
        old_blk.signal(libc::SIGKILL).expect("kill blk0");
        old_blk
            .wait_for(Duration::from_secs(10))
            .expect("blk0 ended");
        let restarted = record_until(rt, "blk0 restarted", |r| r.backends["blk0"].restarts == 1);
        let new_blk = restarted.backends["blk0"].id();
        assert_ne!(new_blk.pid, old_blk.pid());
        assert!(new_blk.is_alive());
        // a planned restart through the control socket: not counted as a death
        let req = Request::BackendRestart {
            device: "net0".into(),
        };
        let reply = control::request(&rt.supervisor_socket(), &req, Duration::from_secs(30));
        let report = match reply {
            Ok(Reply::Restarted(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(report.old_pid, old_net.pid());
        assert!(
            old_net.wait_for(Duration::from_secs(1)).is_some(),
            "old net0 runs"
        );
        let after = record_until(rt, "net0 restarted", |r| {
            r.backends["net0"].planned_restarts == 1
        });
        assert_eq!(after.backends["net0"].restarts, 0);
        assert_eq!(after.backends["net0"].pid, report.new_pid);
        let unknown = Request::BackendRestart {
            device: "vdz".into(),
        };
        match control::request(&rt.supervisor_socket(), &unknown, Duration::from_secs(30)) {
            Ok(Reply::Error(e)) => assert_eq!(
                e,
                "no backend named 'vdz' (the domain's backends: blk0, net0)"
            ),
            other => panic!("{other:?}"),
        }
        // the vmm ends: the supervisor stops the backends and returns
        let vmm_proc = Watched::adopt(vmm).expect("still runs");
        vmm_proc.signal(libc::SIGKILL).expect("kill the vmm");
        let exit = watching.join().expect("the supervisor's loop");
        assert_eq!(exit, Exit::Unknown, "not our child: no status");
        assert!(!new_blk.is_alive(), "blk0 left running");
        assert!(
            !ProcessId::of(report.new_pid).is_ok_and(|p| p.is_alive()),
            "net0 left running"
        );
    });
}
