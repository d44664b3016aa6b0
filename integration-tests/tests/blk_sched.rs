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

/// A splitvisor-blk under `--sched POLICY` on a fresh 16 MiB raw image, in a directory of its
/// own (kept alive with it).
fn start(policy: &str) -> (Scratch, BlkProcess) {
    let dir = Scratch::new(&format!("blk-sched-{policy}"));
    let image = dir.path("disk.img");
    std::fs::write(&image, vec![0u8; 16 << 20]).unwrap();
    let backend = BlkProcess::start(&dir.path("blk.sock"), &image, "raw", &["--sched", policy]);
    (dir, backend)
}

/// The policies of the worker threads and of every other thread, one second into a 2 s run
/// at queue depth `qd` (a worker lives as long as its frontend's connection).
fn policies_at_depth(dir: &Scratch, backend: &BlkProcess, qd: u32) -> (Vec<u32>, Vec<u32>) {
    let mut bench = Command::new(bin("sv-blkbench"))
        .args(["--socket", &dir.path("blk.sock").display().to_string()])
        .args(["--rw", "randread", "--qd", &qd.to_string(), "--secs", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("sv-blkbench (built by `cargo build --release`)");
    std::thread::sleep(Duration::from_secs(1));
    let policies = thread_policies(backend.pid());
    assert!(
        bench.wait().unwrap().success(),
        "sv-blkbench at QD{qd} failed"
    );
    let (workers, others): (Vec<_>, Vec<_>) = policies
        .into_iter()
        .partition(|(name, _)| name == "vring_worker");
    let policy = |threads: Vec<(String, u32)>| threads.into_iter().map(|(_, p)| p).collect();
    (policy(workers), policy(others))
}

#[test]
fn under_auto_the_worker_follows_the_guests_queue_depth() {
    let (dir, backend) = start("auto");
    for (qd, want) in [(1, SCHED_OTHER), (16, SCHED_BATCH), (1, SCHED_OTHER)] {
        let (workers, others) = policies_at_depth(&dir, &backend, qd);
        assert_eq!(workers, vec![want], "QD{qd}: the worker");
        assert!(
            !others.is_empty() && others.iter().all(|p| *p == SCHED_BATCH),
            "QD{qd}: every thread but the worker stays batch: {others:?}"
        );
    }
}

#[test]
fn under_batch_the_worker_stays_batch_at_depth_one() {
    let (dir, backend) = start("batch");
    let (workers, others) = policies_at_depth(&dir, &backend, 1);
    assert_eq!(workers, vec![SCHED_BATCH]);
    assert!(others.iter().all(|p| *p == SCHED_BATCH), "{others:?}");
}
