//! Backends killed under a running guest (issue 24), inside the nested-KVM sandbox: the vmm
//! reconnects to the restarted backend and the guest sees only a pause.
//! - splitvisor-net is SIGKILLed twice during a 20 s iperf3 TCP run and started again (its
//!   tap comes back on the namespace's bridge): the connection survives, iperf3 exits 0.
//! - two disks (raw on io_uring, and qcow2), each on its own splitvisor-blk,
//!   2 queues, fio randwrite with crc32c verify on both while their backends are SIGKILLed and
//!   restarted in turn (up to 10 times each): fio exits 0, no I/O error in the guest's log,
//!   and `qemu-img check` finds the qcow2 image clean afterwards.
//!
//! Run by hand (`cargo test --release -p integration-tests --test backend_reconnect --
//! --ignored`), not in CI: L1 (the TCG-emulated sandbox VM) goes silent in this kill-heavy
//! job too often for CI — on 2026-12-06 the first attempt of one CI run and both attempts of
//! one manual run froze (console heartbeat stopped, QEMU idle), while two CI runs (one after
//! the sandbox's retry) and two manual runs got through. The cause is not found (docs/testing.md, L1 freezes). CI covers the
//! same paths with shorter jobs: svctl_lifecycle.rs (a killed, a SIGSTOPped and a planned
//! restart of a domain's blk backend under guest I/O), balloon_reconnect.rs, and
//! blk_inflight.rs (resubmission between real splitvisor-blk processes, no VM).
//!
//! The raw disk completes out of order (io_uring): each restarted backend resubmits what the
//! killed one left in flight, from the INFLIGHT_SHMFD region the vmm keeps across reconnects
//! (`backends::inflight`; the exact cases are in blk_inflight.rs).

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

const NET_GUEST: &str = r#"
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ping -c 2 -W 5 10.0.2.1 > /dev/null 2>&1
echo "GUEST-IPERF-START"
iperf3 -c 10.0.2.1 -t 20 -f m > /tmp/out.txt 2>&1
rc=$?
echo "GUEST-IPERF $rc $(grep receiver /tmp/out.txt | tail -n1 | awk '{print $7}')"
[ $rc -eq 0 ] || cat /tmp/out.txt
ping -c 2 -W 5 10.0.2.1 > /dev/null 2>&1
echo "GUEST-PING-AFTER $?"
"#;

/// The disk guest (kept short: it travels base64-encoded on the kernel command line, at most
/// 2047 bytes). Second boot (the mark at 48 MiB of vda, written before the reboot while L1
/// kills vda's backend): reading the mark waits for the new backend; vda must work. First
/// boot: fio verify on both disks across the kills; then fio on vdb while vda's backend is
/// SIGSTOPped (the ticks show the console going on); vda works after SIGCONT; reboot.
const BLK_GUEST: &str = r#"
e() { dmesg | grep -ci 'i/o error'; }
D=/dev/vda
if [ "$(dd if=$D bs=512 skip=98304 count=1 2>/dev/null|head -c5)" = MARK2 ]; then
echo GUEST-REBOOTED
dd if=/dev/urandom of=/tmp/r bs=4k count=16
dd if=/tmp/r of=$D bs=4k seek=13000 count=16 oflag=direct;w=$?
r=$(dd if=$D bs=4k skip=13000 count=16 iflag=direct|md5sum)
[ "$r" = "$(md5sum</tmp/r)" ]&&s=same||s=differ
echo "GUEST-VDA-AFTER-REBOOT $w $s";echo "GUEST-REBOOT-IO-ERRORS $(e)";exit 0;fi
F="--bs=4k --rw=randwrite --direct=1 --ioengine=libaio"
f() { fio --name=v --filename=/dev/$1 --size=16M --offset_increment=16M --numjobs=2 $F \
--iodepth=8 --verify=crc32c --do_verify=1 --loops=6 --group_reporting>/tmp/f$1 2>&1;echo $?>/tmp/r$1; }
echo "GUEST-QUEUES $(ls /sys/block/vda/mq|wc -l) $(ls /sys/block/vdb/mq|wc -l)"
echo GUEST-FIO-START
f vda & f vdb;wait
echo "GUEST-FIO $(cat /tmp/rvda) $(cat /tmp/rvdb)"
for d in vda vdb;do [ "$(cat /tmp/r$d)" = 0 ]||tail -n20 /tmp/f$d;done
echo "GUEST-IO-ERRORS $(e)";echo GUEST-FIO-DONE;echo GUEST-STOP-PHASE-START
(i=0;while [ $i -lt 40 ];do echo "GUEST-TICK $i";i=$((i+1));sleep 1;done)&T=$!
fio --name=s --filename=/dev/vdb --size=16M $F --iodepth=4 --time_based --runtime=25>/dev/null 2>&1
echo "GUEST-FIO-VDB-DURING-STOP $?";kill $T
dd if=$D of=/dev/null bs=4k count=256 iflag=direct;echo "GUEST-VDA-AFTER-CONT $?"
echo "GUEST-STOP-IO-ERRORS $(e)"
printf MARK2|dd of=$D bs=512 seek=98304 conv=notrunc oflag=direct;sync
echo GUEST-REBOOTING;reboot -f
"#;

const JOB: &str = r#"
IP=/job/hostbin/ip
W=/tmp/w
mkdir -p $W

# --- net: a bridge with the namespace's address, the backend's tap on it; the bridge has a
# MAC of its own (else it takes its only port's, and a new tap would change it under the
# guest's ARP entry, as scripts/hostnet.sh explains) ---
$IP netns add ns1
$IP -n ns1 link set lo up
$IP -n ns1 link add br0 address 02:00:00:00:02:01 type bridge
$IP -n ns1 addr add 10.0.2.1/24 dev br0
$IP -n ns1 link set br0 up
start_net() {
    rm -f $W/n.pid
    $IP netns exec ns1 splitvisor-net --socket $W/n.sock --create-tap tap1 --bridge br0 \
        --pidfile $W/n.pid 2>>"$JOB/net.err" &
    NET=$!
    wait_for . $W/n.pid 30 || echo "NO-PIDFILE net" >> "$JOB/l1.txt"
}
start_net
$IP netns exec ns1 iperf3 -s > /dev/null 2>&1 &
SRV=$!
boot_case net 400 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz --memory 512M \
    --cmdline "console=ttyS0 quiet sv.cmd64=$NET64" \
    --device vhost-user,type=net,socket=$W/n.sock &
VM=$!
if wait_for GUEST-IPERF-START "$JOB/net.log" 300; then
    for k in 1 2; do
        sleep 6
        kill -9 $NET; wait $NET 2>/dev/null
        start_net
        echo "NET-KILLED $k" >> "$JOB/l1.txt"
    done
fi
wait $VM
kill $NET $SRV; wait $NET $SRV 2>/dev/null
$IP netns del ns1

# --- blk: raw (io_uring) and qcow2, 2 queues each ---
truncate -s 64M $W/d.raw
/job/hostbin/qemu-img create -q -f qcow2 $W/d.qcow2 64M
start_disk() { # start_disk NAME IMAGE ARGS...
    _d=$1 _img=$2
    shift 2
    rm -f $W/$_d.pid
    RUST_LOG=info splitvisor-blk --socket $W/$_d.sock --image $_img --queues 2 \
        --pidfile $W/$_d.pid "$@" 2>>"$JOB/$_d-blk.err" &
    eval PID_$_d=$!
    wait_for . $W/$_d.pid 30 || echo "NO-PIDFILE $_d" >> "$JOB/l1.txt"
}
start_disk raw $W/d.raw --format raw
start_disk qcow $W/d.qcow2 --format qcow2
boot_case blk 600 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz --cpus 2 --memory 512M \
    --cmdline "console=ttyS0 quiet sv.cmd64=$BLK64" \
    --device vhost-user,type=blk,socket=$W/raw.sock,queues=2 \
    --device vhost-user,type=blk,socket=$W/qcow.sock,queues=2 --api-socket $W/api.sock &
VM=$!
kills=0
if wait_for GUEST-FIO-START "$JOB/blk.log" 300; then
    for k in 1 2 3 4 5 6 7 8 9 10; do
        for d in raw qcow; do
            grep -q GUEST-FIO-DONE "$JOB/blk.log" && break 2
            # a random moment in the next 0.2-1.2 s
            sleep $((RANDOM % 11 / 10)).$((RANDOM % 10))
            eval p=\$PID_$d
            kill -9 $p; wait $p 2>/dev/null
            if [ $d = raw ]; then
                start_disk raw $W/d.raw --format raw
            else
                start_disk qcow $W/d.qcow2 --format qcow2
            fi
            kills=$((kills + 1))
        done
    done
fi
echo "BLK-KILLS $kills" >> "$JOB/l1.txt"
echo "BLK-RESUBMITS $(cat "$JOB"/raw-blk.err "$JOB"/qcow-blk.err | grep -c resubmitting)" >> "$JOB/l1.txt"
# one of the two disks' backends SIGSTOPped for 10 s while the guest writes to the other
if wait_for GUEST-STOP-PHASE-START "$JOB/blk.log" 300; then
    sleep 2
    kill -STOP $PID_raw
    sleep 3
    t0=$(grep -c GUEST-TICK "$JOB/blk.log")
    curl -s -o "$JOB/info-stopped.json" -w '%{time_total}' --max-time 10 \
        --unix-socket $W/api.sock http://localhost/api/v1/vm.info > "$JOB/info-secs.txt"
    echo "VMINFO-RC $?" >> "$JOB/l1.txt"
    sleep 4
    t1=$(grep -c GUEST-TICK "$JOB/blk.log")
    echo "TICKS-WHILE-STOPPED $((t1 - t0))" >> "$JOB/l1.txt"
    sleep 1
    kill -CONT $PID_raw
    echo "BLK-STOPPED 10" >> "$JOB/l1.txt"
fi
# a guest reboot while vda's backend is down: the backend comes back 5 s later
if wait_for GUEST-REBOOTING "$JOB/blk.log" 120; then
    kill -9 $PID_raw; wait $PID_raw 2>/dev/null
    sleep 5
    start_disk raw $W/d.raw --format raw
    echo "REBOOT-WHILE-DOWN 5" >> "$JOB/l1.txt"
fi
wait $VM
kill $PID_raw $PID_qcow; wait $PID_raw $PID_qcow 2>/dev/null
/job/hostbin/qemu-img check $W/d.qcow2 > "$JOB/check.txt" 2>&1
echo "QCOW2-CHECK $?" >> "$JOB/l1.txt"
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(900))
            .host_tool("ip")
            .host_tool("iperf3")
            .host_tool("qemu-img")
            .host_tool("curl")
            .run(&format!(
                "{GUEST_SH}\nNET64={}\nBLK64={}\n{JOB}",
                guest::base64(NET_GUEST.as_bytes()),
                guest::base64(BLK_GUEST.as_bytes()),
            ))
    })
}

fn file(name: &str) -> String {
    job().file(name).unwrap_or_default()
}

#[test]
#[ignore = "kill soak, run by hand: L1 freezes too often for CI (see the header)"]
fn a_tcp_connection_survives_two_net_backend_kills() {
    let log = file("net.log");
    let l1 = file("l1.txt");
    assert!(
        l1.contains("NET-KILLED 2"),
        "the backend was not killed twice:\n{l1}\n{log}"
    );
    assert!(!l1.contains("NO-PIDFILE"), "{l1}");
    let (rc, rate) = guest::iperf(&log, "GUEST-IPERF");
    assert_eq!(rc, "0", "iperf3 failed across the kills:\n{log}");
    assert!(rate > 0.0, "{log}");
    assert_eq!(guest::value(&log, "GUEST-PING-AFTER"), Some("0"), "{log}");
    // the vmm saw both outages and both returns
    assert_eq!(
        log.matches("disconnected; reconnecting").count(),
        2,
        "{log}"
    );
    assert_eq!(
        log.matches("the vhost-user backend is back").count(),
        2,
        "{log}"
    );
    assert_eq!(file("net.rc").trim(), "0", "{log}");
}

#[test]
#[ignore = "kill soak, run by hand: L1 freezes too often for CI (see the header)"]
fn fio_verify_passes_on_raw_and_qcow2_while_their_backends_are_killed() {
    let log = file("blk.log");
    let l1 = file("l1.txt");
    let kills: u32 = guest::value(&l1, "BLK-KILLS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        kills >= 6,
        "only {kills} kills happened during fio:\n{l1}\n{log}"
    );
    assert_eq!(guest::value(&log, "GUEST-QUEUES"), Some("2 2"), "{log}");
    assert_eq!(guest::value(&log, "GUEST-FIO"), Some("0 0"), "{log}");
    assert_eq!(guest::value(&log, "GUEST-IO-ERRORS"), Some("0"), "{log}");
    // the loop's kills, and the one during the reboot
    let reboot_kill = usize::from(l1.contains("REBOOT-WHILE-DOWN"));
    assert_eq!(
        log.matches("the vhost-user backend is back").count(),
        kills as usize + reboot_kill,
        "{log}"
    );
    assert_eq!(file("blk.rc").trim(), "0", "{log}");
}

/// A guest reboot while a disk's backend is down (issue 24): the guest boots again, and its
/// disk works once the backend is back.
#[test]
#[ignore = "kill soak, run by hand: L1 freezes too often for CI (see the header)"]
fn a_guest_reboots_while_a_backend_is_down() {
    let log = file("blk.log");
    let l1 = file("l1.txt");
    assert_eq!(
        guest::value(&l1, "REBOOT-WHILE-DOWN"),
        Some("5"),
        "{l1}\n{log}"
    );
    assert_eq!(
        log.matches("SPLITVISOR-GUEST-READY").count(),
        2,
        "booted twice: {log}"
    );
    assert!(log.contains("GUEST-REBOOTED"), "{log}");
    assert_eq!(
        guest::value(&log, "GUEST-VDA-AFTER-REBOOT"),
        Some("0 same"),
        "{log}"
    );
    assert_eq!(
        guest::value(&log, "GUEST-REBOOT-IO-ERRORS"),
        Some("0"),
        "{log}"
    );
}

/// `qemu-img check`: 0 is clean, 3 is leaked clusters only (what a kill mid-allocation may
/// leave, and all qcow2 allows); anything else is corruption or an error.
#[test]
#[ignore = "kill soak, run by hand: L1 freezes too often for CI (see the header)"]
fn the_qcow2_image_is_clean_after_the_kills() {
    let l1 = file("l1.txt");
    let rc = guest::value(&l1, "QCOW2-CHECK");
    assert!(
        matches!(rc, Some("0") | Some("3")),
        "qemu-img check: {rc:?}\n{l1}\n{}",
        file("check.txt")
    );
}

/// One of two disks' backends SIGSTOPped for 10 s (issue 24): the other disk's fio and the
/// serial console go on, `vm.info` answers at once, and after SIGCONT the stopped disk works.
#[test]
#[ignore = "kill soak, run by hand: L1 freezes too often for CI (see the header)"]
fn a_stopped_backend_stalls_only_its_own_disk() {
    let log = file("blk.log");
    let l1 = file("l1.txt");
    assert_eq!(guest::value(&l1, "BLK-STOPPED"), Some("10"), "{l1}\n{log}");
    assert_eq!(guest::value(&l1, "VMINFO-RC"), Some("0"), "{l1}");
    let secs: f64 = file("info-secs.txt").trim().parse().unwrap_or(f64::MAX);
    assert!(secs < 1.0, "vm.info took {secs} s with a backend stopped");
    assert!(
        file("info-stopped.json").contains("\"state\""),
        "{}",
        file("info-stopped.json")
    );
    let ticks: u32 = guest::value(&l1, "TICKS-WHILE-STOPPED")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        ticks >= 2,
        "the console printed {ticks} lines in 4 s:\n{log}"
    );
    assert_eq!(
        guest::value(&log, "GUEST-FIO-VDB-DURING-STOP"),
        Some("0"),
        "{log}"
    );
    assert_eq!(
        guest::value(&log, "GUEST-VDA-AFTER-CONT"),
        Some("0"),
        "{log}"
    );
    assert_eq!(
        guest::value(&log, "GUEST-STOP-IO-ERRORS"),
        Some("0"),
        "{log}"
    );
}
