//! `svctl migrate` between two "hosts" inside the nested-KVM sandbox (issue 28, item 5): two
//! network namespaces whose bridges are joined by a veth, each with an svctl store of its
//! own, the qcow2 disk on storage both see. The domain's definition travels in the migration
//! stream; the destination's supervisor starts the backends once the source has let go of
//! its own.
//!
//! A domain (qcow2 disk, a NIC on the bridge, a balloon) counts on its console and writes a
//! new cluster of its disk on every count, reading it back, while A pings it every 50 ms. A
//! migration to a `migrate-receive` waiting for another domain is refused and the domain
//! runs on; then it moves A → B live (`domjobinfo` on both hosts during it), back B → A
//! paused (virsh's default) with `--undefinesource`, and A → B locally (`--local`: the
//! "hosts" share a file system, so guest RAM's memfd is handed over, not copied). The counts
//! go on across every move without a new boot, the disk reads back what was written, the
//! ping loses at most what the pause explains, `qemu-img check` finds the image clean and
//! nothing is left running.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::counts::{check_counts_on, counts};
use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

const JOB: &str = include_str!("svctl_migrate/job.sh");

/// The guest's script (on its command line): a new disk cluster written and read back on
/// every count.
const GUEST: &str = r#"
ip link set eth0 up
ip addr add 10.0.8.2/24 dev eth0
i=0
while [ $i -lt 3000 ]; do
i=$((i+1))
echo "COUNT $i"
w=$(printf W%07d $i)
at=$(( (i % 900) * 16 + 16 ))
printf $w | dd of=/dev/vda bs=4096 seek=$at conv=notrunc,fsync 2>/dev/null
r=$(dd if=/dev/vda bs=4096 skip=$at count=1 iflag=direct 2>/dev/null | head -c 8)
[ "$r" = $w ] || echo "GUEST-DISK-MISMATCH $i $r"
sleep 0.2
done
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(900))
            .host_tool("ip")
            .host_tool("ping")
            .host_tool("qemu-img")
            .run(&format!(
                "{GUEST_SH}\nGUEST64={}\n{JOB}",
                guest::base64(GUEST.as_bytes())
            ))
    })
}

fn file(name: &str) -> String {
    job().file(name).unwrap_or_default()
}

fn step(name: &str) -> String {
    integration_tests::steps::step(&file("steps.txt"), name)
}

fn ok(name: &str) -> String {
    integration_tests::steps::ok(&file("steps.txt"), name)
}

/// The counts on the destination's console go on from the source's last one.
fn counts_on(console: &str, last: u64) -> Vec<u64> {
    check_counts_on(console, &file(console), last).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_script_fits_the_kernel_command_line() {
    guest::assert_fits_command_line(GUEST);
}

#[test]
fn a_migration_to_a_host_waiting_for_another_domain_is_refused_and_the_domain_runs_on() {
    ok("receive-wrong-name");
    let s = step("migrate-to-wrong-name");
    assert!(s.contains("rc=1"), "{s}");
    assert!(s.contains("still runs here"), "{s}");
    let list = ok("list-b-after-refusal");
    assert!(!list.contains("vmX") && !list.contains("vm1"), "{list}");
}

#[test]
fn the_domain_moves_a_to_b_live_with_its_definition_and_counts_on() {
    ok("install");
    let s = ok("migrate-a-b");
    assert!(s.contains("migrated to tcp:10.0.9.2:7200 (precopy"), "{s}");
    // progress on the way (not a terminal: a line per phase or round)
    assert!(s.contains("Migration: ram"), "{s}");
    let a = file("jobinfo-a.txt");
    assert!(
        a.contains("Unbounded") && a.contains("Outgoing migration"),
        "{a}"
    );
    let b = file("jobinfo-b.txt");
    assert!(
        b.contains("Unbounded") && b.contains("Incoming migration"),
        "{b}"
    );
    // A keeps the definition (shut off), B runs the domain and knows it
    let list = ok("list-a-after");
    assert!(
        list.lines()
            .any(|l| l.contains("vm1") && l.contains("shut off")),
        "{list}"
    );
    let info = ok("dominfo-b");
    assert!(info.contains("running"), "{info}");
    assert!(
        info.contains("Persistent:") && info.contains("yes"),
        "{info}"
    );
    let last_a = *counts(&file("con-a2.txt")).last().expect("counts on A");
    counts_on("con-b1.txt", last_a);
}

#[test]
fn the_domain_moves_back_paused_and_resumes_at_the_destination() {
    ok("receive-a");
    let s = ok("migrate-b-a");
    assert!(s.contains("migrated to tcp:10.0.9.1:7201"), "{s}");
    let list = ok("list-b-after-back");
    assert!(!list.contains("vm1"), "--undefinesource: {list}");
    let info = ok("dominfo-a");
    assert!(info.contains("running"), "{info}");
    let last_b = *counts(&file("con-b2.txt")).last().expect("counts on B");
    let a = counts_on("con-a3.txt", last_b);
    assert!(a.len() >= 5, "{a:?}");
}

#[test]
fn the_domain_moves_locally_with_its_memory_handed_over() {
    ok("receive-b-local");
    let s = ok("migrate-a-b-local");
    assert!(s.contains("(local, 0.0 MiB"), "{s}");
    let last_a = *counts(&file("con-a4.txt")).last().expect("counts on A");
    let b = counts_on("con-b3.txt", last_a);
    assert!(b.len() >= 5, "{b:?}");
}

#[test]
fn the_disk_reads_back_every_write_and_stays_clean() {
    for console in [
        "con-a2.txt",
        "con-b2.txt",
        "con-a3.txt",
        "con-a4.txt",
        "con-b3.txt",
    ] {
        let text = file(console);
        assert!(!text.contains("GUEST-DISK-MISMATCH"), "{console}: {text}");
    }
    let check = ok("qemu-img-check");
    assert!(check.contains("No errors were found"), "{check}");
}

#[test]
fn the_ping_loses_at_most_what_the_pause_explains() {
    let s = ok("migrate-a-b");
    let report = s
        .lines()
        .find(|l| l.contains("migrated to"))
        .unwrap_or_else(|| panic!("no report: {s}"));
    let downtime: u64 = report
        .rsplit("downtime ")
        .next()
        .and_then(|t| t.split(" ms").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no downtime: {s}"));
    // a ping every 50 ms
    integration_tests::ping::assert_loss_within_pause(&file("ping.txt"), 50, downtime, 100);
}

#[test]
fn nothing_is_left_running() {
    ok("destroy");
    let left = step("leftovers");
    assert!(left.trim().is_empty(), "{left}");
}
