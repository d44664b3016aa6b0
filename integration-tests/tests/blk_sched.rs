//! `--sched auto`: a block worker whose guest waits on one request at a time runs under
//! `SCHED_OTHER` (woken by a kick, it runs at once), and under `SCHED_BATCH` while the guest
//! keeps a deeper queue; every other thread stays `SCHED_BATCH`, and `--sched batch` keeps the
//! worker batch at any depth. A real splitvisor-blk process on a raw image, driven over its
//! socket by sv-blkbench (a VM-less vhost-user frontend): no KVM needed.

use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::blk_process::{bin, BlkProcess};
use integration_tests::scratch::Scratch;

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// Each thread's name and policy (field 41 of its stat, counted after the name's `)`).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap();
        threads.push((comm.trim().to_string(), policy));
    }
    threads
}

/// The policies of the backend's threads one second into a 2 s run at queue depth `qd` (a
/// worker lives as long as its frontend's connection).
fn policies_at_depth(
    backend: &BlkProcess,
    socket: &std::path::Path,
    qd: u32,
) -> Vec<(String, u32)> {
    let mut bench = Command::new(bin("sv-blkbench"))
        .args([
            "--socket",
            &socket.display().to_string(),
            "--rw",
            "randread",
        ])
        .args(["--qd", &qd.to_string(), "--secs", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("sv-blkbench (built by `cargo build --release`)");
    std::thread::sleep(Duration::from_secs(1));
    let policies = thread_policies(backend.pid());
    assert!(
        bench.wait().unwrap().success(),
        "sv-blkbench at QD{qd} failed"
    );
    policies
}

fn workers(policies: &[(String, u32)]) -> Vec<u32> {
    policies
        .iter()
        .filter(|(name, _)| name == "vring_worker")
        .map(|(_, p)| *p)
        .collect()
}

#[test]
fn under_auto_the_worker_follows_the_guests_queue_depth() {
    let dir = Scratch::new("blk-sched-auto");
    let (image, socket) = (dir.path("disk.img"), dir.path("blk.sock"));
    std::fs::write(&image, vec![0u8; 16 << 20]).unwrap();
    let backend = BlkProcess::start(&socket, &image, "raw", &["--sched", "auto"]);
    for (qd, want) in [(1, SCHED_OTHER), (16, SCHED_BATCH), (1, SCHED_OTHER)] {
        let policies = policies_at_depth(&backend, &socket, qd);
        assert_eq!(workers(&policies), vec![want], "QD{qd}: {policies:?}");
        let others: Vec<_> = policies
            .iter()
            .filter(|(n, _)| n != "vring_worker")
            .collect();
        assert!(
            !others.is_empty() && others.iter().all(|(_, p)| *p == SCHED_BATCH),
            "QD{qd}: every thread but the worker stays batch: {policies:?}"
        );
    }
}

#[test]
fn under_batch_the_worker_stays_batch_at_depth_one() {
    let dir = Scratch::new("blk-sched-batch");
    let (image, socket) = (dir.path("disk.img"), dir.path("blk.sock"));
    std::fs::write(&image, vec![0u8; 16 << 20]).unwrap();
    let backend = BlkProcess::start(&socket, &image, "raw", &["--sched", "batch"]);
    let policies = policies_at_depth(&backend, &socket, 1);
    assert_eq!(workers(&policies), vec![SCHED_BATCH], "{policies:?}");
    assert!(
        policies.iter().all(|(_, p)| *p == SCHED_BATCH),
        "{policies:?}"
    );
}
