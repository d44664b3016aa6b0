//! splitvisor-balloon killed under a ballooned guest (issue 24, item 3), inside the nested-KVM
//! sandbox. A 1 GiB guest fills and frees its memory, the target is set to 256 MiB on the
//! control socket and the balloon fills; then the backend is SIGKILLed and started again on
//! the same vhost-user socket and control socket (whose file the killed process left behind).
//! The vmm reconnects and gives the new process the config space the guest last saw
//! (SET_CONFIG flagged LIVE_MIGRATION, taken by the relay's hook), so that:
//! - the guest's MemTotal stays shrunk for the 10 s after the restart (its driver sees no
//!   change), and the vmm's guest-memory memfd stays shrunk (its allocated size, from
//!   `st_blocks` of /proc/<vmm>/fd/N);
//! - the new process reports the restored target (256 MiB) and balloon on the control socket
//!   and through the vmm's API (`GET vm.balloon`, what `svctl dommemstat` reads);
//! - a new target (512 MiB, `PUT vm.balloon` as `svctl setmem` sends it) works afterwards.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

/// Fill all but ~100 MiB with a tmpfs file and free it (so that the memfd is allocated and a
/// shrink shows); wait for the 256 MiB target; print MemTotal each second until the 512 MiB
/// target has come; then use memory again.
const GUEST: &str = r#"
avail=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
fill=$((avail - 100))
mkdir -p /mnt && mount -t tmpfs -o size=$((fill + 16))M tmpfs /mnt
dd if=/dev/zero of=/mnt/f bs=1M count=$fill 2>/dev/null
rm /mnt/f
echo "GUEST-FREED $fill"
mt() { awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo; }
start=$(mt)
echo "GUEST-MEMTOTAL-START $start"
i=0; while [ $(mt) -gt $((start - 700)) ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
echo "GUEST-MEMTOTAL-SHRUNK $(mt)"
i=0
while [ $(mt) -lt $((start - 600)) ] && [ $i -lt 400 ]; do
    echo "GUEST-MT $(mt)"
    sleep 1; i=$((i+1))
done
echo "GUEST-MEMTOTAL-GREW $(mt)"
dd if=/dev/zero of=/mnt/g bs=1M count=200 2>/dev/null
echo "GUEST-USED-AGAIN $?"
rm /mnt/g
"#;

const JOB: &str = r#"
W=/tmp/w
mkdir -p $W
L1=$JOB/l1.txt
memfd_kib() { # allocated KiB of the vmm's guest-memory memfd
    fd=$(ls -l /proc/$1/fd | grep splitvisor-guest-ram | head -n1 | awk '{print $9}')
    echo $(( $(stat -L -c %b /proc/$1/fd/$fd) / 2 ))
}
ctl() { splitvisor-balloon ctl --control $W/b.ctl --json "$@"; }
api() { # api METHOD ENDPOINT [JSON]: the vmm's API, as svctl calls it
    if [ -n "${3:-}" ]; then
        curl -sS --max-time 20 --unix-socket $W/api.sock -X "$1" \
            -H 'Content-Type: application/json' -d "$3" "http://localhost/api/v1/$2"
    else
        curl -sS --max-time 20 --unix-socket $W/api.sock -X "$1" "http://localhost/api/v1/$2"
    fi
    echo
}
balloon_bytes() { ctl info | sed -E 's/.*"balloon_bytes":([0-9]+).*/\1/'; }
start_balloon() {
    rm -f $W/b.pid
    RUST_LOG=info splitvisor-balloon --socket $W/b.sock --control $W/b.ctl --pidfile $W/b.pid \
        2>>"$JOB/balloon.err" &
    BAL=$!
    wait_for . $W/b.pid 30 || echo "NO-PIDFILE" >> $L1
}

start_balloon
RUST_LOG=warn,vmm::vhost_user::reconnect=info splitvisor --kernel $L2_KERNEL \
    --initramfs $KIT/l2/initramfs-min.cpio.gz --memory 1G \
    --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64" --api-socket $W/api.sock \
    --device vhost-user,type=balloon,socket=$W/b.sock,control=$W/b.ctl \
    </dev/null >"$JOB/vm.log" 2>&1 &
VMM=$!

wait_for GUEST-FREED "$JOB/vm.log" 300
sleep 1
echo "L1-MEMFD-FULL-KIB $(memfd_kib $VMM)" >> $L1
ctl set-target 256M > "$JOB/set-target.json"
# the balloon holds 700 MiB, or 60 s passed (how fast it fills depends on L1's load)
t=0
while [ $t -lt 120 ]; do
    sleep 0.5; t=$((t + 1))
    [ "$(balloon_bytes)" -ge $((700 << 20)) ] 2>/dev/null && break
done
wait_for GUEST-MEMTOTAL-SHRUNK "$JOB/vm.log" 90
sleep 2
echo "L1-MEMFD-INFLATED-KIB $(memfd_kib $VMM)" >> $L1
ctl info > "$JOB/info-before-kill.json"

# the kill, and a new process on the same paths
kill -9 $BAL; wait $BAL 2>/dev/null
[ -S $W/b.ctl ] && echo "L1-STALE-CONTROL-SOCKET" >> $L1
start_balloon
wait_for "the vhost-user backend is back" "$JOB/vm.log" 30 || echo "NO-RECONNECT" >> $L1
echo "L1-MT-AT-RESTART $(grep -c GUEST-MT "$JOB/vm.log")" >> $L1
sleep 10
echo "L1-MT-BEFORE-SETMEM $(grep -c GUEST-MT "$JOB/vm.log")" >> $L1
cp "$JOB/vm.log" "$JOB/vm-before-setmem.log"
echo "L1-MEMFD-AFTER-RESTART-KIB $(memfd_kib $VMM)" >> $L1
ctl info > "$JOB/info-after-restart.json"
api GET vm.balloon > "$JOB/api-balloon-after-restart.json"
api GET vm.info > "$JOB/api-info-after-restart.json"

# a new target, as svctl setmem sends it
api PUT vm.balloon '{"size": 536870912}' > "$JOB/api-setmem.json"
wait_for GUEST-MEMTOTAL-GREW "$JOB/vm.log" 120
ctl info > "$JOB/info-after-setmem.json"
finish_case vm $VMM 200
kill -TERM $BAL; wait $BAL
echo "BALLOON-EXIT $?" >> $L1
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(720))
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

fn l1(key: &str) -> u64 {
    let l1 = file("l1.txt");
    guest::value(&l1, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing:\n{l1}"))
}

/// The first line of a JSON file the job wrote.
fn json(name: &str) -> serde_json::Value {
    let text = file(name);
    serde_json::from_str(text.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{name}: {e}: {text:?}"))
}

fn num(log: &str, key: &str) -> u64 {
    guest::value(log, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing:\n{log}"))
}

/// The balloon's size as a backend reported it, in MiB.
fn balloon_mib(info: &serde_json::Value) -> u64 {
    info["balloon_bytes"].as_u64().unwrap_or(0) >> 20
}

#[test]
fn the_vmm_reconnects_and_restores_the_config_space_to_the_new_process() {
    let log = file("vm.log");
    let l1 = file("l1.txt");
    assert!(!l1.contains("NO-PIDFILE"), "a balloon did not start:\n{l1}");
    assert!(!l1.contains("NO-RECONNECT"), "{l1}\n{log}");
    assert_eq!(
        log.matches("disconnected; reconnecting").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("the vhost-user backend is back").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("config space restored to the new backend"),
        "{log}"
    );
    let balloon = file("balloon.err");
    assert_eq!(
        balloon
            .matches("balloon state restored from the frontend")
            .count(),
        1,
        "{balloon}"
    );
    let info = json("api-info-after-restart.json");
    let backend = &info["devices"][0]["backend"];
    assert_eq!(backend["connected"], true, "{info}");
    assert_eq!(backend["reconnects"], 1, "{info}");
}

#[test]
fn the_control_socket_comes_back_on_the_same_path() {
    assert!(
        file("l1.txt").contains("L1-STALE-CONTROL-SOCKET"),
        "the killed process's socket file was not there to replace"
    );
    let info = json("info-after-restart.json");
    assert_eq!(info["ok"], true, "{info}");
}

#[test]
fn the_guest_stays_shrunk_after_the_restart() {
    let log = file("vm-before-setmem.log");
    let shrunk = num(&log, "GUEST-MEMTOTAL-SHRUNK");
    let start = num(&log, "GUEST-MEMTOTAL-START");
    assert!(shrunk + 700 <= start, "MemTotal {start} -> {shrunk} MiB");
    let (at, before) = (
        l1("L1-MT-AT-RESTART") as usize,
        l1("L1-MT-BEFORE-SETMEM") as usize,
    );
    let after_restart: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("GUEST-MT ").nth(1))
        .filter_map(|v| v.trim().parse().ok())
        .skip(at)
        .collect();
    // the guest printed once a second for the 10 s between the restart and the new target
    assert!(
        before >= at + 5 && after_restart.len() >= 5,
        "only {} MemTotal lines after the restart:\n{log}",
        after_restart.len()
    );
    for mt in after_restart {
        assert!(
            mt <= shrunk + 16,
            "MemTotal {mt} MiB after the restart, {shrunk} MiB before: the guest deflated"
        );
    }
}

#[test]
fn the_host_memfd_stays_shrunk_after_the_restart() {
    let (full, inflated, after) = (
        l1("L1-MEMFD-FULL-KIB"),
        l1("L1-MEMFD-INFLATED-KIB"),
        l1("L1-MEMFD-AFTER-RESTART-KIB"),
    );
    let balloon = balloon_mib(&json("info-before-kill.json")) << 10;
    assert!(
        full.saturating_sub(inflated) * 10 >= balloon * 9,
        "memfd {full} -> {inflated} KiB for a {balloon} KiB balloon"
    );
    assert!(
        after <= inflated + (32 << 10),
        "memfd {inflated} KiB before the kill, {after} KiB 10 s after the restart"
    );
}

#[test]
fn the_new_process_reports_the_restored_target_and_balloon() {
    let before = json("info-before-kill.json");
    for name in ["info-after-restart.json", "api-balloon-after-restart.json"] {
        let after = json(name);
        assert_eq!(after["target_bytes"], 256u64 << 20, "{name}: {after}");
        assert_eq!(after["ram_bytes"], 1u64 << 30, "{name}: {after}");
        // `actual` as the guest last read the config space: its driver's last write may be
        // one batch (1 MiB) newer
        let (was, is) = (balloon_mib(&before), balloon_mib(&after));
        assert!(
            is + 4 >= was && is <= 768 && was >= 600,
            "{name}: balloon {was} MiB before the kill, {is} MiB after: {after}"
        );
    }
}

#[test]
fn a_new_target_works_after_the_restart() {
    let set = json("api-setmem.json");
    assert_eq!(set["target_bytes"], 512u64 << 20, "{set}");
    let log = file("vm.log");
    let start = num(&log, "GUEST-MEMTOTAL-START");
    let grew = num(&log, "GUEST-MEMTOTAL-GREW");
    assert!(
        grew + 600 > start && grew + 400 < start,
        "MemTotal {grew} MiB after a 512 MiB target (of {start}):\n{log}"
    );
    assert_eq!(guest::value(&log, "GUEST-USED-AGAIN"), Some("0"), "{log}");
    let info = json("info-after-setmem.json");
    assert_eq!(info["target_bytes"], 512u64 << 20, "{info}");
    assert_eq!(file("vm.rc").trim(), "0", "{log}");
    assert!(
        file("l1.txt").contains("BALLOON-EXIT 0"),
        "{}",
        file("l1.txt")
    );
}
