//! `svctl attach-disk`, `detach-disk`, `attach-interface`, `detach-interface` (issue 29, items
//! 1 and 5) inside the nested-KVM sandbox, with real guests: a running domain gets a qcow2
//! disk, makes an ext4 on it; the disk is detached (its splitvisor-blk exits, the guest's
//! /sys/block loses it), attached again with `--persistent` (the definition gets it too) and
//! the file reads back; a NIC on a bridge is attached, the guest pings the bridge through it,
//! it is detached (its backend exits, its tap leaves the bridge). Devices the domain booted
//! with are refused, as are unknown and missing ones. Then attach/detach cycles: the vmm's
//! descriptors, threads, GSIs and MSI routes stay flat. Shut off, `--live` is refused and the
//! default is the definition. On the way: `vcpuinfo`, `vcpupin`, `cpu-stats` of the running
//! domain.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

const JOB: &str = include_str!("svctl_attach/job.sh");

/// How many attach/detach cycles the leak check runs.
const CYCLES: u32 = 100;

const GUEST: &str = r#"
w() { i=0; while ! eval "$1" && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done; }
echo GUEST-UP
w '[ -b /dev/vdb ]'
echo "VDB-ADDED $(cat /sys/block/vdb/size)"
mkdir -p /m
mkfs.ext4 -q -F /dev/vdb && mount -t ext4 /dev/vdb /m && echo attached > /m/f && umount /m
echo "GUEST-WROTE rc=$?"
w '[ ! -b /dev/vdb ]'
echo "VDB-GONE $(ls /sys/block | tr '\n' ' ')"
w '[ -b /dev/vdb ]'
mount -t ext4 /dev/vdb /m && echo "READ-BACK $(cat /m/f)" && umount /m
echo GUEST-READ-DONE
w '[ ! -b /dev/vdb ]'
echo VDB-GONE-AGAIN
w '[ -e /sys/class/net/eth0 ]'
ip link set eth0 up; ip addr add 10.0.4.2/24 dev eth0
echo "ETH0-MAC $(cat /sys/class/net/eth0/address)"
ping -c 3 -W 5 10.0.4.1 >/dev/null 2>&1; echo "PING rc=$?"
echo NIC-DONE
w '[ ! -e /sys/class/net/eth0 ]'
echo "ETH0-GONE $(ls /sys/class/net | tr '\n' ' ')"
sleep 3600
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(1200))
            .host_tool("ip")
            .host_tool("curl")
            .host_tool("qemu-img")
            .run(&format!(
                "{GUEST_SH}\nGUEST64={}\nCYCLES={CYCLES}\n{JOB}",
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

/// A step's `--json` output.
fn json(name: &str) -> serde_json::Value {
    let s = ok(name);
    let text: Vec<&str> = s.lines().take_while(|l| !l.starts_with("rc=")).collect();
    serde_json::from_str(&text.join("\n")).unwrap_or_else(|e| panic!("{name} --json: {e}: {s}"))
}

/// The guest's console with everything up to MARKER (the last look the job took).
fn console(name: &str) -> String {
    file(name)
}

#[test]
fn the_script_fits_the_kernel_command_line() {
    guest::assert_fits_command_line(GUEST);
}

#[test]
fn an_attached_qcow2_disk_is_written_detached_attached_again_and_its_data_stays() {
    ok("install");
    let a = json("attach-disk");
    assert_eq!(a["target"], "vdb", "{a}");
    assert_eq!(a["backend"], "blk1", "{a}");
    assert_eq!(a["live"], true, "{a}");
    assert_eq!(a["config"], false, "running: live only by default: {a}");
    assert!(
        a["bdf"].as_str().is_some_and(|b| b.starts_with("0000:00:")),
        "{a}"
    );
    let l = ok("domblklist-attached");
    assert!(l.contains("vda") && l.contains("boot.raw"), "{l}");
    assert!(l.contains("vdb") && l.contains("data.qcow2"), "{l}");
    let con = console("con-wrote.txt");
    assert!(con.contains("VDB-ADDED 131072"), "{con}");
    assert!(con.contains("GUEST-WROTE rc=0"), "{con}");
    let d = json("detach-disk");
    assert!(d["backend_pid"].as_u64().is_some(), "{d}");
    let after = step("backend-after-detach");
    assert!(
        after.contains("GONE ") && !after.contains("STILL-RUNS"),
        "{after}"
    );
    let con = console("con-gone.txt");
    let gone = con
        .lines()
        .find(|l| l.contains("VDB-GONE "))
        .unwrap_or_default();
    assert!(
        gone.contains("vda") && !gone.contains("vdb"),
        "/sys/block: {con}"
    );
    let l = ok("domblklist-detached");
    assert!(!l.contains("vdb"), "{l}");
    ok("attach-persistent");
    let conf = ok("dumpconfig-persistent");
    assert!(conf.contains("data.qcow2"), "--persistent: {conf}");
    let con = console("con-read.txt");
    assert!(con.contains("READ-BACK attached"), "{con}");
    ok("detach-persistent");
    assert!(console("con-gone2.txt").contains("VDB-GONE-AGAIN"));
    let conf = ok("dumpconfig-after");
    assert!(!conf.contains("data.qcow2"), "{conf}");
    let check = step("qemu-img-check");
    assert!(
        check.contains("No errors were found") && check.contains("rc=0"),
        "{check}"
    );
}

#[test]
fn an_attached_nic_on_a_bridge_carries_the_guests_ping_and_goes_away_detached() {
    let a = json("attach-interface");
    assert_eq!(a["mac"], "52:54:00:12:34:56", "{a}");
    // the domain booted without a NIC: the first one is net0, its tap sv<uuid>n0
    assert_eq!(a["backend"], "net0", "{a}");
    let tap = a["interface"].as_str().unwrap_or_default().to_string();
    assert!(tap.starts_with("sv") && tap.ends_with("n0"), "{a}");
    let l = ok("domiflist");
    assert!(
        l.contains(&tap) && l.contains("svbr1") && l.contains("52:54:00:12:34:56"),
        "{l}"
    );
    let ports = step("bridge-ports");
    assert!(ports.contains(&tap), "the tap is on the bridge: {ports}");
    let con = console("con-ping.txt");
    assert!(con.contains("ETH0-MAC 52:54:00:12:34:56"), "{con}");
    assert!(con.contains("PING rc=0"), "{con}");
    ok("detach-interface");
    let after = step("net-backend-after-detach");
    assert!(
        after.contains("GONE ") && !after.contains("STILL-RUNS"),
        "{after}"
    );
    let con = console("con-eth-gone.txt");
    let gone = con
        .lines()
        .find(|l| l.contains("ETH0-GONE "))
        .unwrap_or_default();
    assert!(gone.contains("lo") && !gone.contains("eth0"), "{con}");
    let ports = step("bridge-ports-after");
    assert!(!ports.contains(&tap), "the tap is gone: {ports}");
}

#[test]
fn boot_unknown_missing_and_doubled_disks_are_refused_with_the_reason() {
    let s = step("detach-boot");
    assert!(
        s.contains("rc=1") && s.contains("vda was there when it started"),
        "{s}"
    );
    let s = step("detach-unknown");
    assert!(s.contains("rc=1") && s.contains("has no disk vdz"), "{s}");
    let s = step("attach-missing");
    assert!(s.contains("rc=1") && s.contains("none.raw"), "{s}");
    let s = step("attach-twice");
    assert!(
        s.contains("rc=1") && s.contains("is already its disk vda"),
        "{s}"
    );
}

#[test]
fn vcpus_are_shown_pinned_and_their_cpu_time_counted() {
    let v = json("vcpuinfo");
    assert_eq!(v[0]["vcpu"], 0, "{v}");
    assert!(v[0]["thread"].as_u64().is_some_and(|t| t > 0), "{v}");
    assert!(v[0]["cpu_time_s"].as_f64().is_some_and(|t| t > 0.0), "{v}");
    assert_eq!(v[0]["affinity"], "0", "{v}");
    let s = ok("vcpupin-live");
    assert!(s.contains("vCPU 0 of domain 'vm1' pinned to CPUs 0"), "{s}");
    let s = ok("vcpupin-show");
    assert!(s.contains("VCPU") && s.contains(" 0      0"), "{s}");
    let s = step("vcpupin-past-the-host");
    assert!(
        s.contains("rc=1") && s.contains("the host has CPUs 0-0 only"),
        "{s}"
    );
    let s = step("vcpupin-no-such-vcpu");
    assert!(s.contains("rc=1") && s.contains("no vCPU 2"), "{s}");
    let c = json("cpu-stats");
    let procs = c["processes"].as_array().cloned().unwrap_or_default();
    assert_eq!(procs[0]["process"], "vmm", "{c}");
    assert!(procs.iter().any(|p| p["process"] == "blk0"), "{c}");
    let total = c["total"]["cpu_time_s"].as_f64().unwrap_or_default();
    let vcpu = c["total"]["vcpu_time_s"].as_f64().unwrap_or_default();
    assert!(total > 0.0 && vcpu > 0.0 && vcpu <= total, "{c}");
}

#[test]
fn setvcpus_live_adds_and_removes_vcpus() {
    let s = ok("setvcpus-4");
    assert!(s.contains("Domain 'vm1': 4 vCPU(s) now"), "{s}");
    let cpus = |step: &str| {
        let s = ok(step);
        s.lines()
            .find(|l| l.starts_with("CPU(s):"))
            .map(|l| l.split_whitespace().last().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("no CPU(s) line: {s}"))
    };
    assert_eq!(cpus("dominfo-4"), "4");
    let v = ok("vcpuinfo-4");
    assert_eq!(v.matches("VCPU:").count(), 4, "{v}");
    ok("setvcpus-2");
    assert_eq!(cpus("dominfo-2"), "2");
    let s = step("setvcpus-past-max");
    assert!(
        s.contains("rc=1") && s.contains("this VM has 1 to 4"),
        "{s}"
    );
    ok("setvcpus-back-to-1");
}

#[test]
fn attach_detach_cycles_leak_nothing() {
    let steps = file("steps.txt");
    assert!(
        !steps.contains("CYCLE-ATTACH-FAILED") && !steps.contains("CYCLE-DETACH-FAILED"),
        "{steps}"
    );
    let rows: Vec<Vec<u64>> = steps
        .lines()
        .filter(|l| l.starts_with("CYCLE "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), CYCLES as usize, "{steps}");
    // cycle, fds, threads, gsis, routes, sockets: the same after the second cycle as after
    // the last
    assert_eq!(rows[1].len(), 6, "{:?}", rows[1]);
    let (second, last) = (&rows[1], &rows[rows.len() - 1]);
    assert_eq!(second[1..], last[1..], "grew: {steps}");
}

#[test]
fn shut_off_live_is_refused_and_the_definition_is_changed() {
    ok("destroy");
    let s = step("attach-live-shut-off");
    assert!(s.contains("rc=1") && s.contains("is not running"), "{s}");
    let a = json("attach-config-shut-off");
    assert_eq!(a["live"], false, "{a}");
    assert_eq!(a["config"], true, "{a}");
    let l = ok("domblklist-shut-off");
    assert!(l.contains("vdb") && l.contains("cycle.raw"), "{l}");
}

#[test]
fn nothing_is_left_running() {
    let steps = file("steps.txt");
    assert!(!steps.contains("NO-"), "a marker never came: {steps}");
    let s = step("leftovers");
    assert!(
        s.lines()
            .all(|l| l.starts_with("==") || l.trim().is_empty()),
        "{s}"
    );
}
