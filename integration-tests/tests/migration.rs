//! Live migration of real guests between vmm processes (issue 28), inside the nested-KVM
//! sandbox. Two "hosts" are two vmm processes in one L1; the backends stay where they are
//! and are handed from one vmm to the next.
//!
//! The first guest (a qcow2 disk it writes and reads back on every count while fio reads
//! and verifies 16 MiB of it over and over, a trigger disk, a NIC on a tap in a network
//! namespace of the job's own, a 64 MiB tmpfs file with a known md5) moves A → B over TCP
//! with pre-copy (the vCPUs' writes logged by KVM, the backends' by themselves), B → C
//! locally (the memfd handed over), fails to move to D (whose disk socket leads nowhere: C
//! takes its backends back and carries on), and moves C → E over TCP. It must count on
//! across every move without a new boot, find every disk write where it put it, fio no
//! verify error, its file intact, and reach L1 over the network.
//!
//! The second guest has no device: it fills a 256 MiB buffer in its RAM (256 files of 1 MiB
//! in a tmpfs) and rewrites it round and round while it moves P → Q over TCP with pre-copy
//! (KVM's dirty log); afterwards it checks each file against the md5 it wrote when it last
//! wrote that file.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::counts::check_counts_on;
use integration_tests::guest::{self, required as value, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

/// The first guest's script (on its command line, so kept short). fio reads back and
/// verifies what it wrote, over and over: the disk backend writes guest memory all along,
/// and a write a migration misses is a verify error.
const GUEST: &str = r#"
mkdir -p /mnt && mount -t tmpfs -o size=80M tmpfs /mnt
dd if=/dev/urandom of=/mnt/f bs=1M count=64 2>/dev/null
echo "GUEST-MD5-BEFORE $(md5sum /mnt/f | cut -d' ' -f1)"
ip link set eth0 up
ip addr add 10.0.8.2/24 dev eth0
ping -c 1 -W 5 10.0.8.1 >/dev/null 2>&1
echo "GUEST-PING-BEFORE $?"
V="--name=v --filename=/dev/vda --offset=16M --size=16M --bs=64k --direct=1 --verify=crc32c"
fio $V --rw=write --do_verify=0 >/dev/null 2>&1
echo "GUEST-FIO-WRITTEN $?"
(r=0; b=0; while [ ! -e /tmp/stop ]; do
fio $V --rw=read --verify_only --ioengine=libaio --iodepth=4 >/tmp/o 2>&1 || { b=$((b+1)); cat /tmp/o; }
r=$((r+1)); done; echo "GUEST-FIO-READS $r bad=$b") &
i=0
while [ $i -lt 3000 ]; do
i=$((i+1))
echo "COUNT $i"
w=$(printf W%07d $i)
printf $w | dd of=/dev/vda bs=4096 seek=200 conv=notrunc,fsync 2>/dev/null
r=$(dd if=/dev/vda bs=4096 skip=200 count=1 iflag=direct 2>/dev/null | head -c 8)
[ "$r" = $w ] || echo "GUEST-DISK-MISMATCH $i $r"
t=$(dd if=/dev/vdb bs=512 count=1 iflag=direct 2>/dev/null | head -c 8)
[ "$t" = FINISHED ] && break
sleep 0.2
done
echo "GUEST-LAST-COUNT $i"
touch /tmp/stop
wait
echo "GUEST-MD5-AFTER $(md5sum /mnt/f | cut -d' ' -f1)"
ping -c 2 -W 5 10.0.8.1 >/dev/null 2>&1
echo "GUEST-PING-AFTER $?"
echo "GUEST-LOCKUPS $(dmesg | grep -ci 'soft lockup')"
"#;

const DIRTY_GUEST: &str = r#"
mkdir -p /mnt && mount -t tmpfs -o size=280M tmpfs /mnt
w() { dd if=/dev/urandom of=/mnt/c$1 bs=64k count=16 2>/dev/null; md5sum /mnt/c$1 | cut -d' ' -f1 > /mnt/s$1; }
k=0
while [ $k -lt 256 ]; do w $k; k=$((k + 1)); done
echo "DIRTY-FILLED"
end=$(($(date +%s) + 60))
n=0
while [ "$(date +%s)" -lt $end ]; do
    w $((n % 256))
    n=$((n + 1))
    [ $((n % 24)) = 0 ] && echo "DIRTY $n"
done
bad=0
for k in $(seq 0 255); do
    [ "$(md5sum /mnt/c$k | cut -d' ' -f1)" = "$(cat /mnt/s$k)" ] || bad=$((bad + 1))
done
echo "GUEST-DIRTY-CHECKED $n bad=$bad"
"#;

const JOB: &str = r#"
IP=/job/hostbin/ip
W=/tmp/w
mkdir -p $W
L1=$JOB/l1.txt
api() { # api SOCKET METHOD ENDPOINT [JSON]
    curl -sS --max-time 300 --unix-socket $W/$1.sock -X "$2" \
        -H 'Content-Type: application/json' ${4:+-d "$4"} -w ' HTTP-%{http_code}' \
        "http://localhost/api/v1/$3"
    echo
}
wait_phase() { # wait_phase SOCKET PHASE: until the source's migration is in PHASE (10 s)
    n=0
    while ! api $1 GET vm.migration-info | grep -q "\"phase\":\"$2\""; do
        n=$((n + 1))
        [ $n -gt 100 ] && return 1
        sleep 0.1
    done
}
last_count() { grep -o 'COUNT [0-9]*' "$1" | tail -n1 | cut -d' ' -f2; }
incoming() { # incoming NAME URL ARGS...: a destination vmm, its PID in $DEST
    _n=$1 _u=$2
    shift 2
    RUST_LOG=warn,vmm::migration=info splitvisor --incoming "$_u" "$@" </dev/null \
        >"$JOB/$_n.log" 2>"$JOB/$_n.err" &
    DEST=$!
}
qemu-img create -q -f qcow2 $W/disk.qcow2 64M
truncate -s 1M $W/trigger.img
start_blk disk $W $W/disk.qcow2 --format qcow2
DISK=$BLK_PID
start_blk trigger $W $W/trigger.img --format raw
TRIG=$BLK_PID
$IP netns add svmig
$IP -n svmig link set lo up
RUST_LOG=info $IP netns exec svmig splitvisor-net --socket $W/net.sock --create-tap svmig0 \
    --mac 52:54:00:00:08:02 --pidfile $W/net.pid 2>>"$JOB/net.err" &
NET=$!
wait_for . $W/net.pid 30 || echo "NO-PIDFILE net" >> $L1
$IP -n svmig addr add 10.0.8.1/24 dev svmig0

RUST_LOG=warn,vmm::migration=info splitvisor --kernel $L2_KERNEL \
    --initramfs $KIT/l2/initramfs.cpio.gz --memory 512M \
    --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64" --api-socket $W/a.sock \
    --device vhost-user,type=blk,socket=$W/disk.sock \
    --device vhost-user,type=blk,socket=$W/trigger.sock \
    --device vhost-user,type=net,socket=$W/net.sock </dev/null >"$JOB/vmA.log" 2>"$JOB/vmA.err" &
A=$!
wait_for "COUNT 10" "$JOB/vmA.log" 300 || { echo "NO-COUNT" >> $L1; exit 1; }

# a migration cancelled during pre-copy, then one whose destination dies: A carries on
incoming vmX tcp:127.0.0.1:7110
X=$DEST
(api a PUT vm.send-migration '{"destination_url": "tcp:127.0.0.1:7110"}' > $W/cancel.out) &
CURL=$!
wait_phase a ram || echo "NO-RAM-PHASE" >> $L1
echo "L1-INFO-DURING $(api a GET vm.migration-info)" >> $L1
echo "L1-CANCEL $(api a PUT vm.cancel-migration)" >> $L1
wait $CURL
echo "L1-CANCELLED $(cat $W/cancel.out)" >> $L1
echo "L1-INFO-AFTER $(api a GET vm.migration-info)" >> $L1
wait $X; echo "L1-X-STATUS $?" >> $L1
incoming vmY tcp:127.0.0.1:7111
Y=$DEST
(api a PUT vm.send-migration '{"destination_url": "tcp:127.0.0.1:7111"}' > $W/kill.out) &
CURL=$!
wait_phase a ram || echo "NO-RAM-PHASE-2" >> $L1
kill -9 $Y
wait $CURL
echo "L1-DEST-KILLED $(cat $W/kill.out)" >> $L1
before=$(last_count "$JOB/vmA.log")
sleep 3
echo "L1-A-COUNTS-ON $before $(last_count "$JOB/vmA.log")" >> $L1

# A -> B over TCP, with L1 pinging the guest every 50 ms
$IP netns exec svmig ping -i 0.05 -c 100000 -W 1 10.0.8.2 > $JOB/ping-ab.txt 2>&1 &
PING=$!
sleep 2
incoming vmB tcp:127.0.0.1:7100 --api-socket $W/b.sock
B=$DEST
echo "L1-MIGRATE-AB $(api a PUT vm.send-migration '{"destination_url": "tcp:127.0.0.1:7100"}')" >> $L1
wait $A; echo "L1-A-STATUS $?" >> $L1
echo "L1-A-LAST $(last_count "$JOB/vmA.log")" >> $L1
wait_for "COUNT" "$JOB/vmB.log" 60 || echo "NO-COUNT-B" >> $L1
sleep 3
kill -INT $PING; wait $PING

# B -> C, local: guest RAM's memfd handed over (pinged likewise)
$IP netns exec svmig ping -i 0.05 -c 100000 -W 1 10.0.8.2 > $JOB/ping-bc.txt 2>&1 &
PING=$!
sleep 2
incoming vmC unix:$W/mig.sock --api-socket $W/c.sock
C=$DEST
echo "L1-MIGRATE-BC $(api b PUT vm.send-migration '{"destination_url": "unix:/tmp/w/mig.sock", "local": true}')" >> $L1
wait $B; echo "L1-B-STATUS $?" >> $L1
echo "L1-B-LAST $(last_count "$JOB/vmB.log")" >> $L1
wait_for "COUNT" "$JOB/vmC.log" 60 || echo "NO-COUNT-C" >> $L1
sleep 3
kill -INT $PING; wait $PING

# C -> D fails (D's disk socket leads nowhere): C takes its backends back and carries on
incoming vmD tcp:127.0.0.1:7101 --device vhost-user,id=blk0,socket=$W/nothing.sock
D=$DEST
echo "L1-MIGRATE-CD $(api c PUT vm.send-migration '{"destination_url": "tcp:127.0.0.1:7101"}')" >> $L1
wait $D; echo "L1-D-STATUS $?" >> $L1
before=$(last_count "$JOB/vmC.log")
sleep 4
echo "L1-C-COUNTS-ON $before $(last_count "$JOB/vmC.log")" >> $L1
echo "L1-C-INFO $(api c GET vm.info)" >> $L1

# C -> E over TCP: the third move of the same guest; E is a vmm started with only its API
# socket, told to wait by vm.receive-migration (Cloud Hypervisor's body)
RUST_LOG=warn,vmm::migration=info splitvisor --api-socket $W/e.sock </dev/null \
    >"$JOB/vmE.log" 2>"$JOB/vmE.err" &
E=$!
n=0
while [ ! -S $W/e.sock ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
(api e PUT vm.receive-migration '{"receiver_url": "tcp:127.0.0.1:7102"}' > $W/receive.out) &
RECEIVE=$!
echo "L1-MIGRATE-CE $(api c PUT vm.send-migration '{"destination_url": "tcp:127.0.0.1:7102"}')" >> $L1
wait $C; echo "L1-C-STATUS $?" >> $L1
wait $RECEIVE
echo "L1-RECEIVED $(cat $W/receive.out)" >> $L1
echo "L1-C-LAST $(last_count "$JOB/vmC.log")" >> $L1
wait_for "COUNT" "$JOB/vmE.log" 60 || echo "NO-COUNT-E" >> $L1
sleep 2
printf 'FINISHED' | dd of=$W/trigger.img conv=notrunc 2>/dev/null
wait_for GUEST-LOCKUPS "$JOB/vmE.log" 180 || echo "NO-GUEST-END" >> $L1
finish_case vmE $E 60
kill -TERM $DISK $TRIG $NET
wait $DISK $TRIG $NET 2>/dev/null
$IP netns del svmig

# pre-copy: a guest without devices dirties its RAM while it moves P -> Q
RUST_LOG=warn,vmm::migration=info splitvisor --kernel $L2_KERNEL \
    --initramfs $KIT/l2/initramfs.cpio.gz --memory 512M \
    --cmdline "console=ttyS0 quiet sv.cmd64=$DIRTY64" --api-socket $W/p.sock \
    </dev/null >"$JOB/vmP.log" 2>"$JOB/vmP.err" &
P=$!
wait_for "DIRTY 24" "$JOB/vmP.log" 400 || { echo "NO-DIRTY" >> $L1; exit 1; }
incoming vmQ tcp:127.0.0.1:7103 --api-socket $W/q.sock
Q=$DEST
echo "L1-MIGRATE-PQ $(api p PUT vm.send-migration '{"destination_url": "tcp:127.0.0.1:7103", "downtime_ms": 200}')" >> $L1
wait $P; echo "L1-P-STATUS $?" >> $L1
wait_for GUEST-DIRTY-CHECKED "$JOB/vmQ.log" 240 || echo "NO-DIRTY-END" >> $L1
finish_case vmQ $Q 60
"#;

/// The scripts go on the kernel command line (at most 2047 bytes with the rest of it).
#[test]
fn the_guest_scripts_fit_the_kernel_command_line() {
    for script in [GUEST, DIRTY_GUEST] {
        let line = format!(
            "console=ttyS0 quiet sv.cmd64={}",
            guest::base64(script.as_bytes())
        );
        assert!(line.len() <= 2047, "{} bytes", line.len());
    }
}

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(900))
            .host_tool("curl")
            .host_tool("ip")
            .host_tool("ping")
            .host_tool("qemu-img")
            .run(&format!(
                "{GUEST_SH}\nGUEST64={}\nDIRTY64={}\n{JOB}",
                guest::base64(GUEST.as_bytes()),
                guest::base64(DIRTY_GUEST.as_bytes())
            ))
    })
}

fn file(name: &str) -> String {
    job().file(name).unwrap_or_default()
}

fn counts_on(name: &str, last: u64) -> Vec<u64> {
    check_counts_on(name, &file(name), last).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_guest_with_disk_and_nic_moves_over_tcp_and_locally_and_counts_on() {
    let l1 = file("l1.txt");
    for (key, mode) in [
        ("L1-MIGRATE-AB", "precopy"),
        ("L1-MIGRATE-BC", "local"),
        ("L1-MIGRATE-CE", "precopy"),
    ] {
        let answer = value(&l1, key);
        assert!(answer.contains("HTTP-200"), "{key}: {l1}");
        assert!(
            answer.contains(&format!("\"mode\":\"{mode}\"")),
            "{key}: {l1}"
        );
    }
    // each source ends with the status that says the VM left
    assert_eq!(value(&l1, "L1-A-STATUS"), "6", "{l1}");
    assert_eq!(value(&l1, "L1-B-STATUS"), "6", "{l1}");
    assert_eq!(value(&l1, "L1-C-STATUS"), "6", "{l1}");
    let a_last: u64 = value(&l1, "L1-A-LAST").parse().unwrap();
    let b = counts_on("vmB.log", a_last);
    let b_last: u64 = value(&l1, "L1-B-LAST").parse().unwrap();
    assert_eq!(*b.last().unwrap(), b_last);
    let c_last: u64 = value(&l1, "L1-C-LAST").parse().unwrap();
    counts_on("vmC.log", b_last);
    let e = counts_on("vmE.log", c_last);
    assert!(e.len() >= 2, "{e:?}");
}

#[test]
fn disk_memory_and_network_survive_every_move() {
    let (first, last) = (file("vmA.log"), file("vmE.log"));
    let md5 = value(&first, "GUEST-MD5-BEFORE");
    assert_eq!(value(&last, "GUEST-MD5-AFTER"), md5, "{last}");
    assert_eq!(value(&first, "GUEST-PING-BEFORE"), "0", "{first}");
    assert_eq!(value(&last, "GUEST-PING-AFTER"), "0", "{last}");
    // after each move the net backend announced the guest's MAC on its tap (a RARP)
    let net = file("net.err");
    let announced = net
        .lines()
        .filter(|l| l.contains("announced the guest's MAC on the tap") && l.contains("sent=3"))
        .count();
    assert!(announced >= 3, "{announced} announcements: {net}");
    assert_eq!(value(&last, "GUEST-LOCKUPS"), "0", "{last}");
    for log in ["vmA.log", "vmB.log", "vmC.log", "vmE.log"] {
        let text = file(log);
        assert!(!text.contains("GUEST-DISK-MISMATCH"), "{log}: {text}");
    }
    assert!(last.contains("GUEST-LAST-COUNT"), "{last}");
    assert_eq!(value(&first, "GUEST-FIO-WRITTEN"), "0", "{first}");
    let reads = value(&last, "GUEST-FIO-READS");
    assert!(
        reads.ends_with(" bad=0"),
        "fio found data a migration lost: {last}"
    );
    assert_eq!(file("vmE.rc").trim(), "0", "{last}");
}

#[test]
fn a_destination_that_cannot_reach_a_backend_leaves_the_source_running_with_its_devices() {
    let l1 = file("l1.txt");
    let answer = value(&l1, "L1-MIGRATE-CD");
    assert!(answer.contains("HTTP-409"), "{l1}");
    assert!(
        answer.contains("blk0"),
        "the error names the device: {answer}"
    );
    assert_ne!(value(&l1, "L1-D-STATUS"), "0", "{l1}");
    let on: Vec<u64> = value(&l1, "L1-C-COUNTS-ON")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    // it counts (and so writes and reads its disk) after the failed attempt
    assert!(on[1] > on[0], "C stopped counting: {l1}");
    let info = value(&l1, "L1-C-INFO");
    assert!(info.contains("\"state\":\"running\""), "{info}");
}

#[test]
fn a_cancelled_migration_and_a_dead_destination_leave_the_source_running_with_its_disk() {
    let l1 = file("l1.txt");
    let during = value(&l1, "L1-INFO-DURING");
    assert!(during.contains("\"running\":true"), "{l1}");
    assert!(value(&l1, "L1-CANCEL").contains("HTTP-204"), "{l1}");
    let cancelled = value(&l1, "L1-CANCELLED");
    assert!(
        cancelled.contains("HTTP-409") && cancelled.contains("cancelled"),
        "{l1}"
    );
    let after = value(&l1, "L1-INFO-AFTER");
    assert!(after.contains("\"phase\":\"cancelled\""), "{after}");
    assert_ne!(value(&l1, "L1-X-STATUS"), "0", "{l1}");
    // killed while RAM was on its way (not before it listened)
    let killed = value(&l1, "L1-DEST-KILLED");
    assert!(
        killed.contains("HTTP-409") && !killed.contains("cannot connect"),
        "{l1}"
    );
    assert!(!l1.contains("NO-RAM-PHASE"), "{l1}");
    // it counts (writing and reading its disk each time) after both
    let on: Vec<u64> = value(&l1, "L1-A-COUNTS-ON")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(on.len() == 2 && on[1] > on[0], "A stopped counting: {l1}");
}

#[test]
fn a_vmm_started_with_only_its_api_socket_receives_a_migration() {
    let l1 = file("l1.txt");
    assert!(value(&l1, "L1-RECEIVED").contains("HTTP-204"), "{l1}");
}

/// A ping every 50 ms from L1 through the migration: it loses at most what the pause the
/// source reports explains (with slack for the emulated machine's timing).
fn ping_loss_within_the_pause(ping_file: &str, key: &str) {
    let l1 = file("l1.txt");
    let answer = value(&l1, key);
    let downtime: u64 = answer
        .split("\"downtime_ms\":")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key}: no downtime in {answer}"));
    integration_tests::ping::assert_loss_within_pause(&file(ping_file), 50, downtime, 40);
}

#[test]
fn a_ping_loses_at_most_the_pause_over_tcp_and_locally() {
    ping_loss_within_the_pause("ping-ab.txt", "L1-MIGRATE-AB");
    ping_loss_within_the_pause("ping-bc.txt", "L1-MIGRATE-BC");
}

#[test]
fn a_guest_dirtying_its_ram_moves_with_precopy_and_finds_every_page() {
    let l1 = file("l1.txt");
    let answer = value(&l1, "L1-MIGRATE-PQ");
    assert!(answer.contains("HTTP-200"), "{l1}");
    assert!(answer.contains("\"mode\":\"precopy\""), "{answer}");
    assert_eq!(value(&l1, "L1-P-STATUS"), "6", "{l1}");
    let q = file("vmQ.log");
    let checked = value(&q, "GUEST-DIRTY-CHECKED");
    assert!(checked.ends_with("bad=0"), "{q}");
    assert!(!q.contains("Linux version"), "booted again: {q}");
    assert!(q.contains("DIRTY"), "no dirtying after the move: {q}");
}
