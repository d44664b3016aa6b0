//! A snapshot of a real guest and its restore in new processes (issue 27), inside the
//! nested-KVM sandbox. The guest (a qcow2 disk, a trigger disk, a NIC on a tap in a network
//! namespace of the job's own) writes a 64 MiB tmpfs file and a marker to its disk, pings
//! L1, then counts on its console while it polls the trigger disk. L1 pauses it, notes the
//! last count, takes `vm.snapshot` (with curl, Cloud Hypervisor's body), kills the vmm and
//! every backend, starts new backends on the same sockets, writes the trigger and runs
//! `splitvisor --restore`, and a second `--restore` of the same snapshot beside it on a
//! second set of backends over copies of the disks (`--device vhost-user,id=…,socket=…`).
//! Each guest must go on counting from where it was (no new boot), then find its tmpfs file
//! and disk marker intact and reach L1 over the network again. The snapshot rests a minute
//! first: the restored guest's clock shows the real time, its timers fire, and it reports no
//! soft lockup.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, required as value, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

const GUEST: &str = r#"
mkdir -p /mnt && mount -t tmpfs -o size=80M tmpfs /mnt
dd if=/dev/urandom of=/mnt/f bs=1M count=64 2>/dev/null
echo "GUEST-MD5-BEFORE $(md5sum /mnt/f | cut -d' ' -f1)"
printf 'SNAPSHOT-DISK-MARKER' | dd of=/dev/vda bs=4096 seek=100 conv=notrunc,fsync 2>/dev/null
echo "GUEST-DISK-WRITTEN $?"
ip link set eth0 up
ip addr add 10.0.7.2/24 dev eth0
ping -c 1 -W 5 10.0.7.1 > /dev/null 2>&1
echo "GUEST-PING-BEFORE $?"
echo "GUEST-BOOTED-AT $(cut -d' ' -f1 /proc/uptime)"
echo "GUEST-IRQS-BEFORE $(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' ';')"
i=0
while [ $i -lt 3000 ]; do
    i=$((i + 1))
    echo "COUNT $i"
    t=$(dd if=/dev/vdb bs=512 count=1 iflag=direct 2>/dev/null | head -c 8)
    [ "$t" = RESTORED ] && break
    sleep 0.2
done
echo "GUEST-LAST-COUNT $i"
echo "GUEST-DATE-AFTER $(date +%s)"
sleep 1
echo "GUEST-SLEPT-1 $(date +%s)"
echo "GUEST-LOCKUPS $(dmesg | grep -ci 'soft lockup')"
echo "GUEST-MD5-AFTER $(md5sum /mnt/f | cut -d' ' -f1)"
echo "GUEST-DISK-AFTER $(dd if=/dev/vda bs=4096 skip=100 count=1 iflag=direct 2>/dev/null | head -c 20)"
ping -c 2 -W 5 10.0.7.1 > /dev/null 2>&1
echo "GUEST-PING-AFTER $?"
echo "GUEST-NET-AFTER $(ip neigh | tr '\n' ';') $(grep eth0 /proc/net/dev)"
echo "GUEST-IRQS-AFTER $(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' ';')"
echo "GUEST-CLOCKSOURCE $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
"#;

const JOB: &str = r#"
IP=/job/hostbin/ip
W=/tmp/w
mkdir -p $W
L1=$JOB/l1.txt
api() { # api METHOD ENDPOINT [JSON]
    if [ -n "${3:-}" ]; then
        curl -sS --max-time 120 --unix-socket $W/api.sock -X "$1" \
            -H 'Content-Type: application/json' -d "$3" -w ' HTTP-%{http_code}' \
            "http://localhost/api/v1/$2"
    else
        curl -sS --max-time 120 --unix-socket $W/api.sock -X "$1" -w ' HTTP-%{http_code}' \
            "http://localhost/api/v1/$2"
    fi
    echo
}
qemu-img create -q -f qcow2 $W/disk.qcow2 64M
truncate -s 1M $W/trigger.img
backends() { # backends SUFFIX: the disk, trigger and net backends of one VM
    start_blk disk$1 $W $W/disk$1.qcow2 --format qcow2
    eval "DISK$1=\$BLK_PID"
    start_blk trigger$1 $W $W/trigger$1.img --format raw
    eval "TRIG$1=\$BLK_PID"
    rm -f $W/net$1.pid
    $IP netns add svsnap$1 2>/dev/null
    $IP -n svsnap$1 link set lo up
    RUST_LOG=info $IP netns exec svsnap$1 splitvisor-net --socket $W/net$1.sock \
        --create-tap svsnap0 --mac 52:54:00:00:07:02 --pidfile $W/net$1.pid \
        2>>"$JOB/net$1.err" &
    eval "NET$1=\$!"
    wait_for . $W/net$1.pid 30 || echo "NO-PIDFILE net$1" >> $L1
    # the host side of the link keeps its address across the restart (as a managed tap
    # does): the guest's ARP entry for L1 stays right
    $IP -n svsnap$1 link set svsnap0 address 02:00:00:00:07:01
    $IP -n svsnap$1 addr add 10.0.7.1/24 dev svsnap0
}
backends ""
RUST_LOG=warn splitvisor --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz \
    --memory 512M --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64" --api-socket $W/api.sock \
    --device vhost-user,type=blk,socket=$W/disk.sock \
    --device vhost-user,type=blk,socket=$W/trigger.sock \
    --device vhost-user,type=net,socket=$W/net.sock \
    </dev/null >"$JOB/vm.log" 2>&1 &
VMM=$!
wait_for "COUNT 10" "$JOB/vm.log" 300 || echo "NO-COUNT" >> $L1
api PUT vm.pause >> $L1
sleep 0.5
# the last full count: the pause may cut the last line (the serial port sends byte by byte:
# "COUNT 1" here, "3" on the restored guest's console)
full_lines() { if [ -z "$(tail -c1 "$1")" ]; then cat "$1"; else sed '$d' "$1"; fi; }
echo "L1-COUNT-AT-PAUSE $(full_lines "$JOB/vm.log" | grep -o '^COUNT [0-9]*' | tail -n1 | cut -d' ' -f2)" >> $L1
echo "L1-SNAPSHOT $(api PUT vm.snapshot '{"destination_url": "file:///tmp/w/snap"}')" >> $L1
echo "L1-SNAPSHOT-FILES $(ls $W/snap | tr '\n' ' ')" >> $L1
echo "L1-SNAPSHOT-RAM-KIB $(du -k $W/snap/memory.bin | cut -f1)" >> $L1
kill -9 $VMM $DISK $TRIG $NET
wait $VMM $DISK $TRIG $NET 2>/dev/null
sleep 0.5
rm -f $W/*.sock
# the snapshot rests a minute: the restored guest's clock must show the real time
sleep 60
# a second copy of the disks, as they were at the snapshot, for a second VM
cp $W/disk.qcow2 $W/disk2.qcow2
for t in "" 2; do
    [ -n "$t" ] && cp $W/trigger.img $W/trigger$t.img
    printf 'RESTORED' | dd of=$W/trigger$t.img conv=notrunc 2>/dev/null
    backends "$t"
done
RUST_LOG=warn,vmm::vm=info splitvisor --restore file:///tmp/w/snap </dev/null \
    >"$JOB/vm2.log" 2>&1 &
VMM2=$!
# the same snapshot again, each device on the second set of backends
RUST_LOG=warn,vmm::vm=info splitvisor --restore /tmp/w/snap --api-socket $W/api2.sock \
    --device vhost-user,id=blk0,socket=$W/disk2.sock \
    --device vhost-user,id=blk1,socket=$W/trigger2.sock \
    --device vhost-user,id=net0,socket=$W/net2.sock </dev/null >"$JOB/vm3.log" 2>&1 &
VMM3=$!
wait_for GUEST-DATE-AFTER "$JOB/vm2.log" 300 && echo "L1-DATE-AT-RESTORE $(date +%s)" >> $L1
wait_for GUEST-CLOCKSOURCE "$JOB/vm2.log" 300 || echo "NO-GUEST-END" >> $L1
wait_for GUEST-CLOCKSOURCE "$JOB/vm3.log" 300 || echo "NO-GUEST-END-3" >> $L1
for t in "" 2; do
    echo "L1-TAP$t $($IP -s -n svsnap$t link show svsnap0 | tr '\n' ' ')" >> $L1
done
finish_case vm2 $VMM2 60
finish_case vm3 $VMM3 60
kill -TERM $DISK $TRIG $NET $DISK2 $TRIG2 $NET2
wait $DISK $TRIG $NET $DISK2 $TRIG2 $NET2 2>/dev/null
$IP netns del svsnap
$IP netns del svsnap2
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(720))
            .host_tool("curl")
            .host_tool("ip")
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

#[test]
fn the_snapshot_is_taken_with_cloud_hypervisors_body_and_holds_only_what_the_guest_used() {
    let l1 = file("l1.txt");
    assert!(l1.contains("HTTP-204"), "{l1}");
    let snap = value(&l1, "L1-SNAPSHOT-FILES");
    for f in ["config.json", "memory.bin", "state.bin"] {
        assert!(snap.contains(f), "{snap}");
    }
    let kib: u64 = value(&l1, "L1-SNAPSHOT-RAM-KIB").parse().unwrap();
    assert!(
        kib < 400 << 10,
        "memory.bin takes {kib} KiB of a 512 MiB guest"
    );
}

#[test]
fn the_restored_guest_counts_on_from_where_it_was_without_booting_again() {
    let (l1, before, after) = (file("l1.txt"), file("vm.log"), file("vm2.log"));
    let at_pause: u64 = value(&l1, "L1-COUNT-AT-PAUSE").parse().unwrap();
    // the loop was paused somewhere in an iteration: it ends that one (no new count if it
    // was past its echo, as when the trigger is what it was reading) and counts on
    let last: u64 = value(&after, "GUEST-LAST-COUNT").parse().unwrap();
    assert!(
        (at_pause..=at_pause + 1).contains(&last),
        "paused at {at_pause}, ended at {last}: {after}"
    );
    let counts: Vec<u64> = after
        .lines()
        .filter_map(|l| l.strip_prefix("COUNT ")?.trim().parse().ok())
        .collect();
    assert!(
        counts.iter().all(|&c| c == at_pause + 1),
        "counted {counts:?} after pausing at {at_pause}: {after}"
    );
    assert!(!after.contains("Linux version"), "booted again:\n{after}");
    assert!(before.contains("GUEST-PING-BEFORE 0"), "{before}");
    assert!(after.contains("GUEST-LAST-COUNT"), "{after}");
    // and it ends as a guest does: powered off, status 0
    assert_eq!(file("vm2.rc").trim(), "0", "{after}");
}

#[test]
fn after_a_minute_on_disk_the_restored_guest_keeps_real_time_without_lockups() {
    let (l1, after) = (file("l1.txt"), file("vm2.log"));
    let l1_date: i64 = value(&l1, "L1-DATE-AT-RESTORE").parse().unwrap();
    let guest_date: i64 = value(&after, "GUEST-DATE-AFTER").parse().unwrap();
    // the clock moved on by the minute the snapshot rested (it is not frozen at the pause)
    assert!(
        (guest_date - l1_date).abs() <= 2,
        "guest {guest_date} vs L1 {l1_date}: {after}"
    );
    let slept: i64 = value(&after, "GUEST-SLEPT-1").parse().unwrap();
    assert!(
        (1..=3).contains(&(slept - guest_date)),
        "a 1 s sleep took {} s",
        slept - guest_date
    );
    assert_eq!(value(&after, "GUEST-LOCKUPS"), "0", "{after}");
}

#[test]
fn memory_disk_and_network_are_as_they_were_in_both_restored_vms() {
    let before = file("vm.log");
    let md5 = value(&before, "GUEST-MD5-BEFORE");
    // the second restore runs beside the first, each device on its own backend (--device
    // id=…,socket=…) over its own copy of the disks
    // each new net backend took the queue pairs the guest enabled from the snapshot's
    // device state (DEVICE_STATE), as its predecessor saved them
    for err in ["net.err", "net2.err"] {
        let log = file(err);
        assert!(
            log.contains("queue pairs in use, from the snapshot pairs=1"),
            "{err}: {log}"
        );
    }
    for log in ["vm2.log", "vm3.log"] {
        let after = file(log);
        assert_eq!(value(&after, "GUEST-MD5-AFTER"), md5, "{log}: {after}");
        let marker = value(&after, "GUEST-DISK-AFTER");
        assert_eq!(marker, "SNAPSHOT-DISK-MARKER", "{log}: {after}");
        assert_eq!(value(&after, "GUEST-PING-AFTER"), "0", "{log}: {after}");
        let clocksource = value(&after, "GUEST-CLOCKSOURCE");
        assert_eq!(clocksource, "kvm-clock", "{log}: {after}");
        assert!(
            !after.contains("Linux version"),
            "{log} booted again: {after}"
        );
    }
    assert_eq!(file("vm3.rc").trim(), "0");
}
