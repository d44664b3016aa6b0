//! vCPU hotplug (issue 29, item 2) inside the nested-KVM sandbox: a guest booted with 1 vCPU of
//! at most 4 (`--max-cpus 4`) is given 4 (`vm.resize`): it sees cpu1-3 appear, brings them
//! online, and a CPU-bound loop per CPU runs on them — the vmm's new vCPU threads use CPU
//! time. Resized to 2, the guest gives up cpu3 and cpu2 (their threads end); back to 4, the
//! parked vCPUs come back. Requests out of range get the reason.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

const GUEST: &str = r#"
w() { i=0; while ! eval "$1" && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done; }
echo "GUEST-UP nproc=$(nproc) possible=$(cat /sys/devices/system/cpu/possible)"
w '[ -e /sys/devices/system/cpu/cpu3/online ]'
for c in 1 2 3; do echo 1 > /sys/devices/system/cpu/cpu$c/online; done
echo "ONLINE nproc=$(nproc) online=$(cat /sys/devices/system/cpu/online)"
for c in 0 1 2 3; do (i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done) & done
wait
echo "BUSY-DONE $(grep -c '^cpu[0-9]' /proc/stat)"
w '[ ! -e /sys/devices/system/cpu/cpu2 ]'
echo "SHRUNK nproc=$(nproc) online=$(cat /sys/devices/system/cpu/online)"
w '[ -e /sys/devices/system/cpu/cpu3/online ]'
for c in 2 3; do echo 1 > /sys/devices/system/cpu/cpu$c/online; done
echo "GROWN-AGAIN nproc=$(nproc)"
sleep 3600
"#;

const JOB: &str = r#"
W=/tmp/w
mkdir -p $W
L1=$JOB/l1.txt
api() { # api METHOD ENDPOINT JSON: the body, then "HTTP <code>"
    curl -sS --max-time 90 --unix-socket $W/api.sock -X "$1" -H 'Content-Type: application/json' \
        -d "$3" -w '\nHTTP %{http_code}\n' "http://localhost/api/v1/$2"
}
threads() { # the vmm's vCPU threads: name and CPU ticks (utime + stime)
    for t in /proc/$VMM/task/*; do
        n=$(cat $t/comm)
        case $n in vcpu*) set -- $(cat $t/stat); echo "$n $((${14} + ${15}))";; esac
    done | sort
}
RUST_LOG=warn,vmm::vcpu_hotplug=info,vmm::devices=info splitvisor --kernel $L2_KERNEL \
    --initramfs $KIT/l2/initramfs.cpio.gz --memory 256M --cpus 1 --max-cpus 4 \
    --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64" --api-socket $W/api.sock \
    </dev/null >"$JOB/vm.log" 2>"$JOB/vmm.log" &
VMM=$!
wait_for GUEST-UP "$JOB/vm.log" 300 || echo "NO-GUEST-UP" >> $L1
threads > $JOB/threads-boot.txt
api PUT vm.resize '{"desired_vcpus": 4}' > $JOB/resize4.txt
api GET vm.info '' > $JOB/info4.txt
wait_for BUSY-DONE "$JOB/vm.log" 300 || echo "NO-BUSY-DONE" >> $L1
threads > $JOB/threads-4.txt
api PUT vm.resize '{"desired_vcpus": 2}' > $JOB/resize2.txt
wait_for SHRUNK "$JOB/vm.log" 60 || echo "NO-SHRUNK" >> $L1
threads > $JOB/threads-2.txt
api GET vm.info '' > $JOB/info2.txt
api PUT vm.resize '{"desired_vcpus": 4}' > $JOB/resize4-again.txt
wait_for GROWN-AGAIN "$JOB/vm.log" 60 || echo "NO-GROWN-AGAIN" >> $L1
threads > $JOB/threads-4-again.txt
api PUT vm.resize '{"desired_vcpus": 5}' > $JOB/resize5.txt
api PUT vm.resize '{"desired_vcpus": 0}' > $JOB/resize0.txt
api PUT vm.resize '{"desired_ram": 1073741824}' > $JOB/resize-ram.txt
api PUT vm.snapshot '{"destination_url": "file:///tmp/w/snap"}' > $JOB/snapshot.txt
kill -TERM $VMM
finish_case vm $VMM 60
echo "VMM-EXIT $(cat $JOB/vm.rc)" >> $L1
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(900))
            .host_tool("curl")
            .run(&format!(
                "{GUEST_SH}\nGUEST64={}\n{JOB}",
                guest::base64(GUEST.as_bytes())
            ))
    })
}

fn file(name: &str) -> String {
    job().file(name).unwrap_or_default()
}

fn context() -> String {
    format!(
        "l1.txt:\n{}\nvm.log (the console):\n{}\nvmm.log:\n{}",
        file("l1.txt"),
        file("vm.log"),
        file("vmm.log")
    )
}

/// The console line that starts with `marker`.
fn line(marker: &str) -> String {
    let log = file("vm.log");
    log.lines()
        .find(|l| l.trim_start().starts_with(marker))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no {marker} line: {}", context()))
}

/// The vCPU threads a `threads-*.txt` lists, with their CPU ticks.
fn threads(name: &str) -> Vec<(String, u64)> {
    file(name)
        .lines()
        .filter_map(|l| {
            let (n, t) = l.split_once(' ')?;
            Some((n.to_string(), t.trim().parse().unwrap_or(0)))
        })
        .collect()
}

fn names(t: &[(String, u64)]) -> Vec<&str> {
    t.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn the_script_fits_the_kernel_command_line() {
    guest::assert_fits_command_line(GUEST);
}

#[test]
fn the_guest_boots_with_one_of_four_possible_vcpus() {
    let up = line("GUEST-UP");
    assert!(
        up.contains("nproc=1") && up.contains("possible=0-3"),
        "{up}"
    );
    assert_eq!(names(&threads("threads-boot.txt")), ["vcpu0"]);
}

#[test]
fn four_vcpus_come_online_and_run_the_guests_loops() {
    let r = file("resize4.txt");
    assert!(r.contains("HTTP 204"), "{r}\n{}", context());
    let info = file("info4.txt");
    assert!(
        info.contains(r#""cpus":4"#) && info.contains(r#""max_cpus":4"#),
        "{info}"
    );
    let online = line("ONLINE");
    assert!(
        online.contains("nproc=4") && online.contains("online=0-3"),
        "{online}"
    );
    let t = threads("threads-4.txt");
    assert_eq!(
        names(&t),
        ["vcpu0", "vcpu1", "vcpu2", "vcpu3"],
        "{}",
        context()
    );
    // each added vCPU's thread ran guest code (the loops)
    for (n, ticks) in &t[1..] {
        assert!(*ticks > 0, "{n} used no CPU: {t:?}");
    }
}

#[test]
fn shrunk_to_two_the_guest_gives_up_two_and_their_threads_end() {
    let r = file("resize2.txt");
    assert!(r.contains("HTTP 204"), "{r}\n{}", context());
    let shrunk = line("SHRUNK");
    assert!(
        shrunk.contains("nproc=2") && shrunk.contains("online=0-1"),
        "{shrunk}"
    );
    assert_eq!(names(&threads("threads-2.txt")), ["vcpu0", "vcpu1"]);
    assert!(file("info2.txt").contains(r#""cpus":2"#));
}

#[test]
fn the_parked_vcpus_come_back() {
    let r = file("resize4-again.txt");
    assert!(r.contains("HTTP 204"), "{r}\n{}", context());
    assert!(line("GROWN-AGAIN").contains("nproc=4"), "{}", context());
    assert_eq!(
        names(&threads("threads-4-again.txt")),
        ["vcpu0", "vcpu1", "vcpu2", "vcpu3"]
    );
}

#[test]
fn bad_requests_get_the_reason() {
    let r = file("resize5.txt");
    assert!(
        r.contains("HTTP 400") && r.contains("5 vCPUs is out of range"),
        "{r}"
    );
    let r = file("resize0.txt");
    assert!(
        r.contains("HTTP 400") && r.contains("this VM has 1 to 4"),
        "{r}"
    );
    let r = file("resize-ram.txt");
    assert!(
        r.contains("HTTP 400") && r.contains("only desired_vcpus"),
        "{r}"
    );
    let r = file("snapshot.txt");
    assert!(
        r.contains("HTTP 409") && r.contains("vCPUs were added"),
        "{r}"
    );
}

#[test]
fn the_vmm_ends_cleanly() {
    let l1 = file("l1.txt");
    assert!(!l1.contains("NO-"), "{}", context());
    assert!(
        l1.contains("VMM-EXIT 5"),
        "stopped by SIGTERM: {}",
        context()
    );
    assert!(!file("vmm.log").contains("panicked"), "{}", context());
}
