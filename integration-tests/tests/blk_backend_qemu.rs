//! splitvisor-blk under a frontend nobody here wrote: QEMU (TCG, on the host) boots the guest
//! kit kernel with `vhost-user-blk-pci` on our backend's socket, over a raw and a qcow2 image.
//! The guest runs a verifying fio job on both queues (served by one worker thread on the raw
//! image, so io_uring completions are routed by queue) and writes a pattern the host then finds
//! in the image (the qcow2 read back by `qemu-img convert`, after `qemu-img check`); the same
//! fixed set of writes made through our qcow2 code and through QEMU's own qcow2 driver gives
//! images `qemu-img compare` finds identical. Serial, queue count, SIGUSR1 counters and a clean
//! SIGTERM exit are checked on the way.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

/// After `guest::vda_fio_verify`: a pattern the host checks in the image.
const GUEST: &str = r#"
yes GUEST-DATA | head -c 1048576 > /tmp/b
dd if=/tmp/b of=/dev/vda bs=65536 seek=512 conv=fsync 2>/dev/null
echo "GUEST-WROTE-MD5 $(md5sum < /tmp/b | cut -d' ' -f1)"
"#;

/// The same writes, whoever serves the disk: 4 KiB-aligned, inside and across clusters.
const GUEST_FIXED: &str = r#"
for off in 0 1 7 15 16 100 333 1000 4095 8000; do
    yes "blk $off" | head -c $((4096 * (off % 5 + 1))) > /tmp/p
    dd if=/tmp/p of=/dev/vda bs=4096 seek=$off conv=notrunc,fsync 2>/dev/null
done
echo GUEST-FIXED-DONE
"#;

const JOB: &str = r#"
W=/tmp/w
mkdir -p $W
qemu_case() { # qemu_case NAME TIMEOUT GUEST64 DEVICE-ARGS...
    _n=$1 _t=$2 _g=$3
    shift 3
    qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 512M -nodefaults -no-user-config \
        -display none -serial stdio -no-reboot \
        -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \
        "$@" -kernel $KIT/l2/vmlinuz -initrd $KIT/l2/initramfs.cpio.gz \
        -append "console=ttyS0 quiet sv.cmd64=$_g" </dev/null >"$JOB/$_n.log" 2>&1 &
    finish_case "$_n" $! "$_t"
}
vhost_blk() { echo "-chardev socket,id=blk,path=$1 -device vhost-user-blk-pci,chardev=blk,num-queues=2"; }
region_md5() { dd if=$1 bs=65536 skip=512 count=16 2>/dev/null | md5sum | cut -d' ' -f1; }

# raw
truncate -s 64M $W/raw.img
start_blk raw $W $W/raw.img --queues 2 --threads 1 --serial SV-RAW-1
BLK=$BLK_PID
qemu_case raw 400 $GUEST64 $(vhost_blk $W/raw.sock)
kill -USR1 $BLK; sleep 1
kill -TERM $BLK; wait $BLK
echo "HOST-BLK-EXIT $?" >> "$JOB/host.txt"
echo "HOST-READ-MD5 $(region_md5 $W/raw.img)" >> "$JOB/host.txt"
[ -e $W/raw.sock ] && echo "HOST-SOCKET-LEFT" >> "$JOB/host.txt"

# qcow2
qemu-img create -q -f qcow2 $W/disk.qcow2 64M
start_blk qcow2 $W $W/disk.qcow2 --queues 2
qemu_case qcow2 400 $GUEST64 $(vhost_blk $W/qcow2.sock)
kill -TERM $BLK_PID; wait $BLK_PID
qemu-img check $W/disk.qcow2 > "$JOB/qcow2-check.txt" 2>&1
echo "HOST-QCOW2-CHECK-RC $?" >> "$JOB/host.txt"
qemu-img convert -O raw $W/disk.qcow2 $W/disk.raw
echo "HOST-QCOW2-READ-MD5 $(region_md5 $W/disk.raw)" >> "$JOB/host.txt"

# the same fixed writes through our qcow2 and QEMU's
qemu-img create -q -f qcow2 $W/ours.qcow2 64M
qemu-img create -q -f qcow2 $W/theirs.qcow2 64M
start_blk fixed $W $W/ours.qcow2 --queues 2
qemu_case fixed-ours 400 $GUEST_FIXED64 $(vhost_blk $W/fixed.sock)
kill -TERM $BLK_PID; wait $BLK_PID
qemu_case fixed-qemu 400 $GUEST_FIXED64 -drive file=$W/theirs.qcow2,format=qcow2,if=virtio
qemu-img check $W/ours.qcow2 >> "$JOB/qcow2-check.txt" 2>&1
echo "HOST-FIXED-CHECK-RC $?" >> "$JOB/host.txt"
qemu-img compare $W/ours.qcow2 $W/theirs.qcow2 > "$JOB/compare.txt" 2>&1
echo "HOST-COMPARE-RC $?" >> "$JOB/host.txt"
rm -rf $W
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        let guest64 = guest::base64((guest::vda_fio_verify(8) + GUEST).as_bytes());
        let fixed64 = guest::base64(GUEST_FIXED.as_bytes());
        Sandbox::new()?
            .on_host()
            .timeout(Duration::from_secs(600))
            .run(&format!(
                "{GUEST_SH}\nGUEST64={guest64}\nGUEST_FIXED64={fixed64}\n{JOB}"
            ))
    })
}

fn raw_log() -> String {
    job().file("raw.log").unwrap_or_default()
}

#[test]
fn qemu_boots_on_our_backend_and_fio_verify_passes_on_two_queues_sharing_one_thread() {
    let log = raw_log();
    assert!(guest::ready(&log).is_some(), "guest did not boot:\n{log}");
    assert_eq!(guest::value(&log, "GUEST-QUEUES"), Some("2"), "{log}");
    assert_eq!(guest::value(&log, "GUEST-SECTORS"), Some("131072"), "{log}");
    assert_eq!(guest::value(&log, "GUEST-FIO-STATUS"), Some("0"), "{log}");
    assert_eq!(guest::guest_exit(&log), Some(0), "{log}");
}

#[test]
fn what_the_guest_wrote_is_in_the_image() {
    let log = raw_log();
    let host = job().file("host.txt").unwrap_or_default();
    let wrote = guest::value(&log, "GUEST-WROTE-MD5").expect("guest checksum");
    assert_eq!(
        guest::value(&host, "HOST-READ-MD5"),
        Some(wrote),
        "{host}\n{log}"
    );
}

#[test]
fn the_serial_reaches_the_guest() {
    let log = raw_log();
    assert_eq!(
        guest::value(&log, "GUEST-SERIAL"),
        Some("SV-RAW-1"),
        "{log}"
    );
}

#[test]
fn the_backend_logs_counters_and_exits_cleanly_on_sigterm() {
    let host = job().file("host.txt").unwrap_or_default();
    let err = job().file("raw-blk.err").unwrap_or_default();
    let setup = job().file("setup.txt").unwrap_or_default();
    assert!(!setup.contains("NO-PIDFILE"), "{setup}");
    assert_eq!(
        guest::value(&host, "HOST-BLK-EXIT"),
        Some("0"),
        "{host}\n{err}"
    );
    assert!(
        !host.contains("HOST-SOCKET-LEFT"),
        "socket not removed: {host}"
    );
    let stats = err
        .lines()
        .find(|l| l.contains("stats:"))
        .unwrap_or_else(|| panic!("no stats line:\n{err}"));
    let writes: u64 = guest::value(&stats.replace('=', " "), "writes")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(writes >= 4096, "fio's writes are counted: {stats}");
    assert!(stats.contains("bad_requests=0"), "{stats}");
}

#[test]
fn fio_verify_passes_on_a_qcow2_image_that_qemu_img_then_checks_clean() {
    let log = job().file("qcow2.log").unwrap_or_default();
    let host = job().file("host.txt").unwrap_or_default();
    let check = job().file("qcow2-check.txt").unwrap_or_default();
    assert_eq!(guest::value(&log, "GUEST-FIO-STATUS"), Some("0"), "{log}");
    assert_eq!(
        guest::value(&host, "HOST-QCOW2-CHECK-RC"),
        Some("0"),
        "{check}"
    );
    assert!(check.contains("No errors were found"), "{check}");
    assert!(!check.contains("leaked"), "{check}");
}

#[test]
fn qemu_img_convert_reads_back_what_the_guest_wrote_into_qcow2() {
    let log = job().file("qcow2.log").unwrap_or_default();
    let host = job().file("host.txt").unwrap_or_default();
    let wrote = guest::value(&log, "GUEST-WROTE-MD5").expect("guest checksum");
    assert_eq!(
        guest::value(&host, "HOST-QCOW2-READ-MD5"),
        Some(wrote),
        "{host}"
    );
}

#[test]
fn our_qcow2_writes_equal_qemus_own() {
    let ours = job().file("fixed-ours.log").unwrap_or_default();
    let theirs = job().file("fixed-qemu.log").unwrap_or_default();
    let host = job().file("host.txt").unwrap_or_default();
    let compare = job().file("compare.txt").unwrap_or_default();
    assert!(ours.contains("GUEST-FIXED-DONE"), "{ours}");
    assert!(theirs.contains("GUEST-FIXED-DONE"), "{theirs}");
    assert_eq!(
        guest::value(&host, "HOST-FIXED-CHECK-RC"),
        Some("0"),
        "{host}"
    );
    assert_eq!(
        guest::value(&host, "HOST-COMPARE-RC"),
        Some("0"),
        "{compare}"
    );
    assert!(compare.contains("Images are identical"), "{compare}");
}
