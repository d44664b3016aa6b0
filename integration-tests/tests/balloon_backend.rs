//! splitvisor-balloon under our vmm, inside the nested-KVM sandbox, measured from the host
//! side: the allocated size of the vmm's guest-memory memfd (`st_blocks` of
//! /proc/<vmm>/fd/N).
//!
//! - inflate: a 1 GiB guest fills most of its memory (tmpfs) and frees it; the target is set
//!   to 256 MiB through the control socket; MemTotal follows and, within 10 s, the memfd has
//!   shrunk by at least 90 % of what the balloon holds by then. Back to 1 GiB: the guest uses the memory
//!   again. Its statistics, read through the control socket, match its /proc/meminfo.
//! - free page reporting: the same fill and free gives the memory back with no target change
//!   (at least 80 % of it within 30 s).
//! - deflate-on-oom: with the target at 256 MiB, a guest that needs 600 MiB gets it back
//!   instead of being OOM-killed.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

/// Fill all but ~100 MiB of the guest's memory with a tmpfs file, free it, and say so.
const FILL: &str = r#"
avail=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
fill=$((avail - 100))
mkdir -p /mnt && mount -t tmpfs -o size=$((fill + 16))M tmpfs /mnt
dd if=/dev/zero of=/mnt/f bs=1M count=$fill 2>/dev/null
rm /mnt/f
echo "GUEST-FREED $fill"
"#;

/// Inflate case: after the fill, wait for MemTotal to drop, then to come back, then use the
/// memory again; then report MemFree for the stats comparison.
const INFLATE: &str = r#"
mt() { awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo; }
start=$(mt)
echo "GUEST-MEMTOTAL-START $start"
i=0; while [ $(mt) -gt $((start - 700)) ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "GUEST-MEMTOTAL-SHRUNK $(mt)"
i=0; while [ $(mt) -lt $((start - 16)) ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "GUEST-MEMTOTAL-BACK $(mt)"
dd if=/dev/zero of=/mnt/g bs=1M count=600 2>/dev/null
echo "GUEST-USED-AGAIN $?"
rm /mnt/g
sleep 1
echo "GUEST-MEMFREE-KB $(awk '/^MemFree:/ {print $2}' /proc/meminfo)"
sleep 8
"#;

/// Deflate-on-OOM case: wait until the balloon holds most memory, then need 600 MiB.
const OOM: &str = r#"
i=0; while [ $i -lt 600 ]; do
    free=$(awk '/^MemFree:/ {print int($2 / 1024)}' /proc/meminfo)
    [ $free -lt 400 ] && break
    sleep 0.1; i=$((i+1))
done
echo "GUEST-BALLOONED-FREE-MIB $(awk '/^MemFree:/ {print int($2 / 1024)}' /proc/meminfo)"
mkdir -p /mnt2 && mount -t tmpfs -o size=700M tmpfs /mnt2
dd if=/dev/zero of=/mnt2/f bs=1M count=600 2>/dev/null
echo "GUEST-OOM-DD $?"
"#;

const JOB: &str = r#"
W=/tmp/w
mkdir -p $W
memfd_kib() { # allocated KiB of the vmm's guest-memory memfd
    fd=$(ls -l /proc/$1/fd | grep splitvisor-guest-ram | head -n1 | awk '{print $9}')
    echo $(( $(stat -L -c %b /proc/$1/fd/$fd) / 2 ))
}
ctl() { _c=$1; shift; splitvisor-balloon ctl --control $W/$_c.ctl --json "$@"; }
balloon_vm() { # balloon_vm NAME GUEST64 BACKEND-OPTS...
    _n=$1 _g=$2
    shift 2
    splitvisor-balloon --socket $W/$_n.sock --control $W/$_n.ctl --pidfile $W/$_n.pid "$@" \
        2>"$JOB/$_n-balloon.err" &
    BAL=$!
    wait_for . $W/$_n.pid 30 || echo "NO-PIDFILE $_n" >> "$JOB/l1.txt"
    splitvisor --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs-min.cpio.gz --memory 1G \
        --cmdline "console=ttyS0 quiet sv.cmd64=$_g" \
        --device vhost-user,type=balloon,socket=$W/$_n.sock </dev/null >"$JOB/$_n.log" 2>&1 &
    VMM=$!
}
finish_vm() { # finish_vm NAME
    finish_case $1 $VMM 200
    kill -TERM $BAL; wait $BAL
    echo "BALLOON-EXIT-$1 $?" >> "$JOB/l1.txt"
}

# inflate to 256 MiB and back
balloon_vm inflate $INFLATE64
wait_for GUEST-FREED "$JOB/inflate.log" 300
sleep 1
echo "L1-MEMFD-BEFORE-KIB $(memfd_kib $VMM)" >> "$JOB/l1.txt"
ctl inflate set-target 256M > "$JOB/set-target.json"
# as soon as the balloon holds 700 MiB, or at 60 s (the guest waits as long for its MemTotal
# to drop) whatever it holds then: how fast it fills depends on the emulated L1's load
t=0
while [ $t -lt 120 ]; do
    sleep 0.5; t=$((t + 1))
    b=$(ctl inflate info | sed -E 's/.*"balloon_bytes":([0-9]+).*/\1/')
    [ "$b" -ge $((700 << 20)) ] 2>/dev/null && break
done
echo "L1-INFLATE-HALF-SECS $t" >> "$JOB/l1.txt"
echo "L1-MEMFD-AFTER-KIB $(memfd_kib $VMM)" >> "$JOB/l1.txt"
ctl inflate info > "$JOB/info-inflated.json"
# the guest sees the shrink before the target goes back up
wait_for GUEST-MEMTOTAL-SHRUNK "$JOB/inflate.log" 90
ctl inflate set-target 1G >> "$JOB/set-target.json"
wait_for GUEST-MEMFREE-KB "$JOB/inflate.log" 120
ctl inflate stats --timeout-ms 5000 > "$JOB/stats.json"
finish_vm inflate

# free page reporting: no target change
balloon_vm report $FILL64 --free-page-reporting
wait_for GUEST-FREED "$JOB/report.log" 300
at=$(memfd_kib $VMM)
echo "L1-REPORT-AT-FREE-KIB $at" >> "$JOB/l1.txt"
# up to 30 s, until 80 % of what the guest freed is back
want=$(( $(grep GUEST-FREED "$JOB/report.log" | awk '{print $2}') * 1024 * 8 / 10 ))
t=0
while [ $t -lt 60 ] && [ $((at - $(memfd_kib $VMM))) -lt $want ]; do sleep 0.5; t=$((t + 1)); done
echo "L1-REPORT-AFTER-KIB $(memfd_kib $VMM)" >> "$JOB/l1.txt"
echo "L1-REPORT-SECS $((t / 2))" >> "$JOB/l1.txt"
ctl report info > "$JOB/info-report.json"
finish_vm report

# deflate on OOM
balloon_vm oom $OOM64 --deflate-on-oom
wait_for SPLITVISOR-GUEST-READY "$JOB/oom.log" 300
ctl oom set-target 256M > /dev/null
finish_vm oom
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        let b = |s: &str| guest::base64(s.as_bytes());
        Sandbox::new()?
            .timeout(Duration::from_secs(720))
            .run(&format!(
                "{GUEST_SH}\nINFLATE64={}\nFILL64={}\nOOM64={}\n{JOB}",
                b(&format!("{FILL}{INFLATE}")),
                b(&format!("{FILL}sleep 35")),
                b(OOM),
            ))
    })
}

fn l1(key: &str) -> u64 {
    let l1 = job().file("l1.txt").unwrap_or_default();
    guest::value(&l1, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing:\n{l1}"))
}

fn json(file: &str) -> serde_json::Value {
    let text = job().file(file).unwrap_or_default();
    serde_json::from_str(text.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{file}: {e}: {text:?}"))
}

fn log(name: &str) -> String {
    job().file(&format!("{name}.log")).unwrap_or_default()
}

fn num(log: &str, key: &str) -> u64 {
    guest::value(log, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing:\n{log}"))
}

#[test]
fn inflating_to_256_mib_shrinks_the_guest_and_the_memfd() {
    let log = log("inflate");
    let start = num(&log, "GUEST-MEMTOTAL-START");
    let shrunk = num(&log, "GUEST-MEMTOTAL-SHRUNK");
    // a 768 MiB balloon (1 GiB - 256 MiB); how close to it the driver gets depends on how
    // much it can allocate, so 700 MiB is the bar
    assert!(
        shrunk + 700 <= start,
        "MemTotal {start} -> {shrunk} MiB:\n{log}"
    );
    let info = json("info-inflated.json");
    let balloon = info["balloon_bytes"].as_u64().unwrap_or(0) >> 10;
    assert!(
        balloon >= 600 << 10,
        "balloon {balloon} KiB after {} half-seconds: {info}",
        l1("L1-INFLATE-HALF-SECS")
    );
    let (before, after) = (l1("L1-MEMFD-BEFORE-KIB"), l1("L1-MEMFD-AFTER-KIB"));
    assert!(
        before.saturating_sub(after) * 10 >= balloon * 9,
        "memfd {before} -> {after} KiB for a {balloon} KiB balloon"
    );
    assert_eq!(info["counters"]["invalid"], 0, "{info}");
}

#[test]
fn back_at_1_gib_the_guest_uses_its_memory_again() {
    let log = log("inflate");
    let start = num(&log, "GUEST-MEMTOTAL-START");
    assert!(num(&log, "GUEST-MEMTOTAL-BACK") + 16 >= start, "{log}");
    assert_eq!(guest::value(&log, "GUEST-USED-AGAIN"), Some("0"), "{log}");
    assert_eq!(
        job().file("inflate.rc").unwrap_or_default().trim(),
        "0",
        "{log}"
    );
}

#[test]
fn guest_statistics_match_its_meminfo() {
    let stats = json("stats.json");
    let free = stats["stats"]["free_memory"].as_u64().unwrap_or(0) >> 10;
    let meminfo = num(&log("inflate"), "GUEST-MEMFREE-KB");
    assert!(
        free.abs_diff(meminfo) * 20 <= meminfo,
        "free_memory {free} KiB vs MemFree {meminfo} KiB: {stats}"
    );
    assert!(
        stats["stats"]["total_memory"].as_u64().unwrap_or(0) > 900 << 20,
        "{stats}"
    );
}

#[test]
fn free_page_reporting_returns_freed_memory_without_a_target() {
    let log = log("report");
    let filled = num(&log, "GUEST-FREED") << 10;
    let (at_free, after) = (l1("L1-REPORT-AT-FREE-KIB"), l1("L1-REPORT-AFTER-KIB"));
    let info = json("info-report.json");
    assert!(
        at_free.saturating_sub(after) * 10 >= filled * 8,
        "memfd {at_free} -> {after} KiB after freeing {filled} KiB: {info}"
    );
    assert_eq!(info["target_bytes"], 1u64 << 30, "{info}");
}

#[test]
fn deflate_on_oom_gives_memory_back_instead_of_killing() {
    let log = log("oom");
    assert!(
        num(&log, "GUEST-BALLOONED-FREE-MIB") < 400,
        "the balloon did not take the memory first:\n{log}"
    );
    assert_eq!(guest::value(&log, "GUEST-OOM-DD"), Some("0"), "{log}");
    assert!(!log.contains("Killed process"), "{log}");
}

#[test]
fn backends_exit_cleanly() {
    let l1 = job().file("l1.txt").unwrap_or_default();
    for case in ["inflate", "report", "oom"] {
        assert!(l1.contains(&format!("BALLOON-EXIT-{case} 0")), "{l1}");
    }
    assert!(!l1.contains("NO-PIDFILE"), "{l1}");
}
