//! splitvisor-blk under our own vmm, inside the nested-KVM sandbox: a verifying fio job on two
//! queues, then a file system made, filled and synced by the guest is intact when a second VM
//! opens the image through the same backend process (which serves the new connection); and a
//! read-only backend keeps the guest from changing a single byte; a grown image reaches the
//! running guest (SIGUSR2 → CONFIG_CHANGE_MSG → config interrupt); the verifying fio job also
//! passes on a qcow2 image, which `qemu-img check` finds clean afterwards.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

/// First boot: fio verify (`guest::vda_fio_verify`), then mkfs + files + sync.
const GUEST_FS: &str = r#"
mkfs.ext4 -q -F /dev/vda > /tmp/mkfs.out 2>&1 || cat /tmp/mkfs.out
mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo GUEST-MOUNTED
i=0
while [ $i -lt 50 ]; do
    yes "file $i" | head -c $((i * 4096 + 100)) > /mnt/f$i
    i=$((i + 1))
done
echo "GUEST-FILES-MD5 $(cat /mnt/f* | md5sum | cut -d' ' -f1)"
sync
umount /mnt && echo GUEST-UNMOUNTED
"#;

/// Second boot, same backend: the files are there.
const GUEST_CHECK: &str = r#"
mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo GUEST-MOUNTED
echo "GUEST-FILES-MD5 $(cat /mnt/f* | md5sum | cut -d' ' -f1)"
echo "GUEST-FILES $(ls /mnt | grep -c '^f')"
umount /mnt
"#;

/// Read-only backend: the disk says so, writes fail, reading works.
const GUEST_RO: &str = r#"
echo "GUEST-RO $(cat /sys/block/vda/ro)"
if dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct 2>/tmp/dd.err; then
    echo "GUEST-RO-WRITE succeeded"
else
    echo "GUEST-RO-WRITE failed: $(cat /tmp/dd.err | head -n1)"
fi
mkdir -p /mnt && mount -t ext4 -o ro /dev/vda /mnt && echo GUEST-MOUNTED
echo "GUEST-FILES-MD5 $(cat /mnt/f* | md5sum | cut -d' ' -f1)"
umount /mnt
"#;

const JOB: &str = r#"
W=/tmp/w
mkdir -p $W
truncate -s 128M $W/disk.img
start_blk blk $W $W/disk.img --queues 2 --serial SV-BLK-1
BLK=$BLK_PID
vm() { # vm NAME GUEST64 SOCKET
    boot_case $1 300 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz --cpus 2 \
        --memory 512M --cmdline "console=ttyS0 quiet sv.cmd64=$2" \
        --device vhost-user,type=blk,socket=$3,queues=2
}
vm fs $GUEST_FS64 $W/blk.sock
vm check $GUEST_CHECK64 $W/blk.sock

kill -TERM $BLK; wait $BLK
echo "L1-BLK-EXIT $?" >> "$JOB/l1.txt"

echo "L1-MD5-BEFORE-RO $(md5sum < $W/disk.img | cut -d' ' -f1)" >> "$JOB/l1.txt"
start_blk ro $W $W/disk.img --readonly
RO=$BLK_PID
boot_case ro 300 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz --memory 512M \
    --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST_RO64" \
    --device vhost-user,type=blk,socket=$W/ro.sock
kill -TERM $RO; wait $RO
echo "L1-MD5-AFTER-RO $(md5sum < $W/disk.img | cut -d' ' -f1)" >> "$JOB/l1.txt"

# online resize: the image grows, SIGUSR2, and the guest sees the new size by itself
# (CONFIG_CHANGE_MSG -> the vmm's config interrupt -> the driver rereads the capacity)
truncate -s 64M $W/grow.img
start_blk grow $W $W/grow.img
GROW=$BLK_PID
splitvisor --kernel $L2_KERNEL --initramfs $L2_INITRD --memory 256M \
    --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST_GROW64" \
    --device vhost-user,type=blk,socket=$W/grow.sock </dev/null >"$JOB/grow.log" 2>&1 &
VM=$!
wait_for GUEST-SIZE-BEFORE "$JOB/grow.log" 200
truncate -s 96M $W/grow.img
kill -USR2 $GROW
finish_case grow $VM 120
kill -TERM $GROW; wait $GROW

# the verifying fio job on a qcow2 image, which qemu-img then checks
qemu-img create -q -f qcow2 $W/disk.qcow2 128M
start_blk qcow2 $W $W/disk.qcow2 --queues 2
vm qcow2 $GUEST_FIO64 $W/qcow2.sock
kill -TERM $BLK_PID; wait $BLK_PID
qemu-img check $W/disk.qcow2 > "$JOB/qcow2-check.txt" 2>&1
echo "L1-QCOW2-CHECK-RC $?" >> "$JOB/l1.txt"
"#;

/// Online resize: the size before, then (waiting up to 60 s) after the host grew the image.
const GUEST_GROW: &str = r#"
before=$(cat /sys/block/vda/size)
echo "GUEST-SIZE-BEFORE $before"
i=0; while [ "$(cat /sys/block/vda/size)" = "$before" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "GUEST-SIZE-AFTER $(cat /sys/block/vda/size)"
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        let b = |s: &str| guest::base64(s.as_bytes());
        Sandbox::new()?
            .timeout(Duration::from_secs(600))
            .host_tool("qemu-img")
            .run(&format!(
                "{GUEST_SH}\nGUEST_FS64={}\nGUEST_CHECK64={}\nGUEST_RO64={}\nGUEST_FIO64={}\nGUEST_GROW64={}\n{JOB}",
                b(&(guest::vda_fio_verify(16) + GUEST_FS)),
                b(GUEST_CHECK),
                b(GUEST_RO),
                b(&guest::vda_fio_verify(16)),
                b(GUEST_GROW),
            ))
    })
}

fn log(name: &str) -> String {
    job().file(&format!("{name}.log")).unwrap_or_default()
}

#[test]
fn fio_verify_passes_on_two_queues_under_our_vmm() {
    let fs = log("fs");
    assert!(guest::ready(&fs).is_some(), "guest did not boot:\n{fs}");
    assert_eq!(guest::value(&fs, "GUEST-SERIAL"), Some("SV-BLK-1"), "{fs}");
    assert_eq!(guest::value(&fs, "GUEST-QUEUES"), Some("2"), "{fs}");
    assert_eq!(guest::value(&fs, "GUEST-FIO-STATUS"), Some("0"), "{fs}");
}

#[test]
fn files_written_by_one_vm_are_intact_in_the_next() {
    let (fs, check) = (log("fs"), log("check"));
    assert!(fs.contains("GUEST-UNMOUNTED"), "{fs}");
    let wrote = guest::value(&fs, "GUEST-FILES-MD5").expect("files checksum");
    assert!(check.contains("GUEST-MOUNTED"), "{check}");
    assert_eq!(guest::value(&check, "GUEST-FILES"), Some("50"), "{check}");
    assert_eq!(
        guest::value(&check, "GUEST-FILES-MD5"),
        Some(wrote),
        "{check}"
    );
    let setup = job().file("setup.txt").unwrap_or_default();
    assert!(!setup.contains("NO-PIDFILE"), "{setup}");
    let l1 = job().file("l1.txt").unwrap_or_default();
    assert_eq!(guest::value(&l1, "L1-BLK-EXIT"), Some("0"), "{l1}");
}

#[test]
fn a_grown_image_reaches_the_guest_through_a_config_change_interrupt() {
    let grow = log("grow");
    assert_eq!(
        guest::value(&grow, "GUEST-SIZE-BEFORE"),
        Some("131072"),
        "{grow}"
    );
    assert_eq!(
        guest::value(&grow, "GUEST-SIZE-AFTER"),
        Some("196608"),
        "{grow}"
    );
}

#[test]
fn a_read_only_backend_refuses_writes_and_leaves_the_image_unchanged() {
    let ro = log("ro");
    let l1 = job().file("l1.txt").unwrap_or_default();
    assert_eq!(guest::value(&ro, "GUEST-RO"), Some("1"), "{ro}");
    let write = guest::value(&ro, "GUEST-RO-WRITE").unwrap_or_default();
    assert!(
        write.starts_with("failed"),
        "a write to a read-only disk: {ro}"
    );
    assert!(ro.contains("GUEST-MOUNTED"), "{ro}");
    let before = guest::value(&l1, "L1-MD5-BEFORE-RO").expect("checksum before");
    assert_eq!(guest::value(&l1, "L1-MD5-AFTER-RO"), Some(before), "{l1}");
    let fs = log("fs");
    assert_eq!(
        guest::value(&ro, "GUEST-FILES-MD5"),
        guest::value(&fs, "GUEST-FILES-MD5"),
        "{ro}"
    );
}

#[test]
fn fio_verify_passes_on_qcow2_under_our_vmm_and_the_image_checks_clean() {
    let log = log("qcow2");
    let l1 = job().file("l1.txt").unwrap_or_default();
    let check = job().file("qcow2-check.txt").unwrap_or_default();
    assert_eq!(guest::value(&log, "GUEST-FIO-STATUS"), Some("0"), "{log}");
    assert_eq!(guest::value(&l1, "L1-QCOW2-CHECK-RC"), Some("0"), "{check}");
    assert!(check.contains("No errors were found"), "{check}");
}
