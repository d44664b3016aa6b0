//! splitvisor's vhost-user frontend against a backend nobody here wrote: qemu-storage-daemon's
//! vhost-user-blk export, inside the nested-KVM sandbox. Data written on either side is seen
//! on the other, multi-queue works, the data path does not exit to the vmm, PCI remove/rescan,
//! driver unload/reload and a guest reboot restart the rings, killing the backend leaves the vmm running,
//! and backends that cannot be used (no socket, no VERSION_1) leave the VM running with its
//! other disks.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

/// The guest: read the pattern L1 wrote at 0, write its own at 1 MiB, run a verifying fio job
/// at 8 MiB, remove/rescan the device, unload/reload the driver, then leave a mark at 32 MiB
/// and reboot. Booted again (in the same vmm, same backend connection), it finds the mark,
/// reads back what it wrote and runs fio again, then powers off.
const GUEST: &str = r#"
v=/dev/vda
m() { md5sum | cut -d' ' -f1; }
r() { dd if=$v bs=64k "$@" 2>/dev/null | m; }
f() { fio --name=a --filename=$v --bs=4k --rw=randwrite --direct=1 --verify=crc32c "$@"; }
w() { i=0; while [ ! -b $v ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done; }
if [ "$(dd if=$v bs=512 skip=65536 count=1 2>/dev/null | head -c 5)" = MARK1 ]; then
    echo "GUEST-REBOOTED-NPROC $(nproc)"
    echo "GUEST-AFTER-REBOOT-MD5 $(r skip=16 count=16)"
    f --offset=8M --size=4M >/dev/null 2>&1
    echo "GUEST-AFTER-REBOOT-FIO $?"
    exit 0
fi
echo "GUEST-READ-MD5 $(r count=16)"
yes GUEST-DATA | head -c 1048576 > /tmp/b
dd if=/tmp/b of=$v bs=64k seek=16 2>/dev/null && sync
echo "GUEST-WROTE-MD5 $(m < /tmp/b)"
echo "GUEST-QUEUES $(ls /sys/block/vda/mq | wc -l)"
f --offset=8M --size=16M > /tmp/fio.out 2>&1
echo "GUEST-FIO-STATUS $?"
echo "GUEST-VDA-STAT $(cat /sys/block/vda/stat)"
dev=$(basename "$(readlink -f /sys/block/vda/device/..)")
echo 1 > "/sys/bus/pci/devices/$dev/remove"
echo "GUEST-AFTER-REMOVE $(ls /sys/block | grep -c vda)"
echo 1 > /sys/bus/pci/rescan
w
echo "GUEST-AFTER-RESCAN-MD5 $(r count=16)"
rmmod virtio_blk && echo "GUEST-AFTER-RMMOD $(ls /sys/block | grep -c vda)"
insmod /lib/modules/virtio_blk.ko
w
echo "GUEST-AFTER-RELOAD-MD5 $(r count=16)"
printf MARK1 | dd of=$v bs=512 seek=65536 conv=notrunc 2>/dev/null && sync
echo GUEST-REBOOTING
reboot -f
"#;

const JOB: &str = r#"
yes SPLITVISOR | head -c 1048576 > /tmp/pattern
dd if=/dev/zero of=/tmp/disk.img bs=1M count=64 2>/dev/null
dd if=/tmp/pattern of=/tmp/disk.img conv=notrunc 2>/dev/null
echo "L1-WROTE-MD5 $(md5sum < /tmp/pattern | cut -d' ' -f1)" > "$JOB/l1.txt"
qsd() { # qsd IMAGE SOCKET
    qemu-storage-daemon --blockdev driver=file,node-name=f,filename=$1,cache.direct=off \
        --blockdev driver=raw,node-name=d,file=f \
        --export type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=$2,writable=on,num-queues=2 &
}
qsd /tmp/disk.img /tmp/blk.sock
QSD=$!
export RUST_LOG=vmm=info
boot_case blk 300 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz \
    --cpus 2 --memory 512M --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64" \
    --device vhost-user,type=blk,socket=/tmp/blk.sock,queues=2
unset RUST_LOG
kill $QSD; wait $QSD
echo "L1-READ-MD5 $(dd if=/tmp/disk.img bs=65536 skip=16 count=16 2>/dev/null | md5sum | cut -d' ' -f1)" >> "$JOB/l1.txt"

# kill the backend under a running guest: the vmm must keep running and say so
dd if=/dev/zero of=/tmp/disk2.img bs=1M count=16 2>/dev/null
qsd /tmp/disk2.img /tmp/blk2.sock
QSD=$!
splitvisor --kernel $L2_KERNEL --initramfs $L2_INITRD --memory 256M --cmdline "console=ttyS0 quiet" \
    --device vhost-user,type=blk,socket=/tmp/blk2.sock </dev/null >"$JOB/kill.log" 2>"$JOB/kill.err" &
VMM=$!
wait_for SPLITVISOR-GUEST-READY "$JOB/kill.log" 200
kill -9 $QSD
wait_for disconnected "$JOB/kill.err" 30
sleep 2
kill -0 $VMM 2>/dev/null && echo "VMM-ALIVE-AFTER-BACKEND-KILL" >> "$JOB/l1.txt"
kill -TERM $VMM
finish_case kill $VMM 30

# backends the vmm cannot use (a socket that never appears, a backend without VERSION_1) next
# to a good one: the VM boots with the good disk, the errors name device and socket
sv-fake-backend --socket /tmp/fake.sock --features 0x40000000 2>/dev/null &
FAKE=$!
dd if=/dev/zero of=/tmp/disk3.img bs=1M count=16 2>/dev/null
dd if=/tmp/pattern of=/tmp/disk3.img conv=notrunc 2>/dev/null
qsd /tmp/disk3.img /tmp/blk3.sock
QSD=$!
boot_case startfail 200 --kernel $L2_KERNEL --initramfs $L2_INITRD --memory 256M \
    --cmdline "console=ttyS0 quiet sv.cmd64=$STARTFAIL64" \
    --device vhost-user,type=blk,socket=/tmp/missing.sock \
    --device vhost-user,type=blk,socket=/tmp/fake.sock \
    --device vhost-user,type=blk,socket=/tmp/blk3.sock
kill $QSD $FAKE; wait $QSD $FAKE

"#;

/// With one usable disk out of three: how many the guest has, and what the good one holds.
const STARTFAIL: &str = r#"
echo "GUEST-DISKS $(ls /sys/block | grep -c '^vd')"
echo "GUEST-READ-MD5 $(head -c 1048576 /dev/vda | md5sum | cut -d' ' -f1)"
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        let guest64 = guest::base64(GUEST.as_bytes());
        // the job takes ~110 s; well past that, L1 is frozen (see shared_job)
        Sandbox::new()?
            .timeout(Duration::from_secs(480))
            .host_tool("qemu-storage-daemon")
            .run(&format!(
                "{GUEST_SH}\nGUEST64={guest64}\nSTARTFAIL64={}\n{JOB}",
                guest::base64(STARTFAIL.as_bytes())
            ))
    })
}

fn blk_log() -> String {
    job().file("blk.log").unwrap_or_default()
}

#[test]
fn guest_reads_what_l1_wrote_and_l1_reads_what_the_guest_wrote() {
    let l1 = job().file("l1.txt").unwrap_or_default();
    let log = blk_log();
    assert!(guest::ready(&log).is_some(), "guest did not boot:\n{log}");
    let wrote = guest::value(&l1, "L1-WROTE-MD5").expect("L1 pattern checksum");
    assert_eq!(guest::value(&log, "GUEST-READ-MD5"), Some(wrote), "{log}");
    let guest_wrote = guest::value(&log, "GUEST-WROTE-MD5").expect("guest pattern checksum");
    assert_eq!(guest::value(&l1, "L1-READ-MD5"), Some(guest_wrote), "{l1}");
    assert_eq!(
        job().file("blk.rc").unwrap_or_default().trim(),
        "0",
        "{log}"
    );
}

#[test]
fn fio_verify_passes_with_two_queues_and_two_vcpus() {
    let log = blk_log();
    assert_eq!(guest::ready(&log).map(|r| r.nproc), Some(2), "{log}");
    assert_eq!(guest::value(&log, "GUEST-QUEUES"), Some("2"), "{log}");
    assert_eq!(guest::value(&log, "GUEST-FIO-STATUS"), Some("0"), "{log}");
}

#[test]
fn the_data_path_does_not_exit_to_the_vmm() {
    let log = blk_log();
    let stat = guest::value(&log, "GUEST-VDA-STAT").expect("vda stats");
    let fields: Vec<u64> = stat
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let requests = fields[0] + fields[4]; // reads + writes completed
    assert!(
        requests > 4000,
        "fio should have made thousands of requests: {stat}"
    );
    // the vmm logs the device's counters when the driver resets it at poweroff
    let line = log
        .lines()
        .find(|l| l.contains("device reset by the driver") && l.contains("activations=1"))
        .unwrap_or_else(|| panic!("no counters line:\n{log}"));
    let counter = |key: &str| -> u64 {
        let raw = line.split(&format!("{key}=")).nth(1).expect(key);
        let digits: String = raw
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect(key)
    };
    assert_eq!(
        counter("notify_exits"),
        0,
        "queue notifications reached the vmm: {line}"
    );
    assert!(
        counter("bar_exits") < requests / 10,
        "{} BAR exits for {requests} requests: {line}",
        counter("bar_exits")
    );
}

#[test]
fn pci_remove_and_rescan_leave_the_device_working() {
    let log = blk_log();
    let l1 = job().file("l1.txt").unwrap_or_default();
    assert_eq!(
        guest::value(&log, "GUEST-AFTER-REMOVE"),
        Some("0"),
        "vda gone after remove: {log}"
    );
    let wrote = guest::value(&l1, "L1-WROTE-MD5").expect("L1 pattern checksum");
    assert_eq!(
        guest::value(&log, "GUEST-AFTER-RESCAN-MD5"),
        Some(wrote),
        "{log}"
    );
    assert!(
        log.contains("activations=2"),
        "the rescanned device was activated again: {log}"
    );
}

#[test]
fn driver_unload_and_reload_leave_the_device_working() {
    let log = blk_log();
    let l1 = job().file("l1.txt").unwrap_or_default();
    assert_eq!(
        guest::value(&log, "GUEST-AFTER-RMMOD"),
        Some("0"),
        "vda gone after rmmod: {log}"
    );
    let wrote = guest::value(&l1, "L1-WROTE-MD5").expect("L1 pattern checksum");
    assert_eq!(
        guest::value(&log, "GUEST-AFTER-RELOAD-MD5"),
        Some(wrote),
        "{log}"
    );
    assert!(
        log.contains("activations=3"),
        "the reloaded driver activated the device again: {log}"
    );
}

#[test]
fn guest_reboot_resets_the_vm_in_place_and_the_device_works_after_it() {
    let log = blk_log();
    assert!(log.contains("GUEST-REBOOTING"), "{log}");
    assert!(
        log.contains("guest rebooted: resetting the VM"),
        "the vmm reset the VM in place: {log}"
    );
    assert_eq!(
        log.matches("SPLITVISOR-GUEST-READY").count(),
        2,
        "booted twice: {log}"
    );
    assert_eq!(
        guest::value(&log, "GUEST-REBOOTED-NPROC"),
        Some("2"),
        "both vCPUs came back: {log}"
    );
    let guest_wrote = guest::value(&log, "GUEST-WROTE-MD5").expect("guest pattern checksum");
    assert_eq!(
        guest::value(&log, "GUEST-AFTER-REBOOT-MD5"),
        Some(guest_wrote),
        "{log}"
    );
    assert_eq!(
        guest::value(&log, "GUEST-AFTER-REBOOT-FIO"),
        Some("0"),
        "{log}"
    );
    assert!(
        log.contains("activations=4"),
        "the device was activated again after the reboot: {log}"
    );
}

#[test]
fn killing_the_backend_leaves_the_vmm_running() {
    let l1 = job().file("l1.txt").unwrap_or_default();
    let log = job().file("kill.log").unwrap_or_default();
    // the vmm's own messages go to stderr, apart from the guest console on stdout
    let err = job().file("kill.err").unwrap_or_default();
    assert!(guest::ready(&log).is_some(), "guest did not boot:\n{log}");
    assert!(
        err.contains("device blk0: the vhost-user backend on /tmp/blk2.sock disconnected"),
        "{err}"
    );
    assert!(l1.contains("VMM-ALIVE-AFTER-BACKEND-KILL"), "{l1}\n{log}");
    assert_eq!(
        job().file("kill.rc").unwrap_or_default().trim(),
        "5",
        "stopped by SIGTERM afterwards"
    );
}

#[test]
fn unusable_backends_leave_the_vm_running_with_its_good_disk() {
    let log = job().file("startfail.log").unwrap_or_default();
    let l1 = job().file("l1.txt").unwrap_or_default();
    assert!(
        log.contains("device blk0: the backend socket /tmp/missing.sock did not appear"),
        "{log}"
    );
    assert!(
        log.contains(
            "device blk1: the backend on /tmp/fake.sock does not offer VIRTIO_F_VERSION_1"
        ),
        "{log}"
    );
    assert_eq!(guest::value(&log, "GUEST-DISKS"), Some("1"), "{log}");
    let wrote = guest::value(&l1, "L1-WROTE-MD5").expect("L1 pattern checksum");
    assert_eq!(guest::value(&log, "GUEST-READ-MD5"), Some(wrote), "{log}");
    assert_eq!(guest::guest_exit(&log), Some(0), "{log}");
}
