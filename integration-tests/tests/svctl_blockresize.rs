//! `svctl blockresize` (issue 29, item 4) inside the nested-KVM sandbox: a domain with a raw
//! and a qcow2 disk, each an ext4 mounted in the guest, both grown while mounted (the vmm's
//! `vm.resize-disk`, each splitvisor-blk's control socket, a config-change interrupt); the
//! guest sees the new sizes, `resize2fs` grows the filesystems online and they take more than
//! the old size held. Shrinking and an unknown disk are refused with the reason; shut off,
//! the qcow2 image is grown by svctl itself; `qemu-img check` finds it clean.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

const JOB: &str = include_str!("svctl_blockresize/job.sh");

const MIB: u64 = 1 << 20;

/// The guest's script: ext4 on both disks, mounted; wait for both to grow; resize2fs; fill
/// more than 64 MiB on each; unmount; then it waits to be destroyed (its console history goes
/// with the vmm, so the guest must not power off before the job has read it).
const GUEST: &str = r#"
ln -sf /proc/mounts /etc/mtab
mkfs.ext4 -q -F /dev/vda && mkfs.ext4 -q -F /dev/vdb || echo GUEST-MKFS-FAILED
mkdir -p /a /b
mount -t ext4 /dev/vda /a && mount -t ext4 /dev/vdb /b || echo GUEST-MOUNT-FAILED
a0=$(cat /sys/block/vda/size); b0=$(cat /sys/block/vdb/size)
echo "SIZES-BEFORE $a0 $b0"
echo GUEST-MOUNTED
i=0
while [ $i -lt 1500 ]; do
a=$(cat /sys/block/vda/size); b=$(cat /sys/block/vdb/size)
[ $a -gt $a0 ] && [ $b -gt $b0 ] && break
sleep 0.2; i=$((i+1))
done
echo "SIZES-AFTER $a $b"
resize2fs /dev/vda > /tmp/ra 2>&1; echo "RESIZE2FS-A rc=$?"
resize2fs /dev/vdb > /tmp/rb 2>&1; echo "RESIZE2FS-B rc=$?"
echo "DF-A $(df -k /a | tail -n1 | awk '{print $2}')"
echo "DF-B $(df -k /b | tail -n1 | awk '{print $2}')"
dd if=/dev/zero of=/a/big bs=1M count=96 conv=fsync 2>/dev/null; echo "FILL-A rc=$?"
dd if=/dev/zero of=/b/big bs=1M count=120 conv=fsync 2>/dev/null; echo "FILL-B rc=$?"
umount /a && umount /b; echo "UMOUNT rc=$?"
echo GUEST-DONE
sleep 600
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(900))
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

fn step(name: &str) -> String {
    integration_tests::steps::step(&file("steps.txt"), name)
}

fn ok(name: &str) -> String {
    integration_tests::steps::ok(&file("steps.txt"), name)
}

/// The numbers after `key` on the console line that starts with it.
fn numbers(console: &str, key: &str) -> Vec<u64> {
    let line = console
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in the console: {console}"));
    line.split_whitespace()
        .filter_map(|w| w.trim_start_matches("rc=").parse().ok())
        .collect()
}

#[test]
fn the_script_fits_the_kernel_command_line() {
    guest::assert_fits_command_line(GUEST);
}

#[test]
fn both_disks_grow_while_mounted_and_the_guest_sees_it() {
    ok("install");
    let s = ok("grow-vda");
    assert!(s.contains("Block device 'vda' is resized"), "{s}");
    let s = ok("grow-vdb");
    let text: Vec<&str> = s.lines().take_while(|l| !l.starts_with("rc=")).collect();
    let v: serde_json::Value =
        serde_json::from_str(&text.join("\n")).unwrap_or_else(|e| panic!("--json: {e}: {s}"));
    assert_eq!(v["capacity_bytes"], 160 * MIB, "{s}");
    assert_eq!(v["old_bytes"], 64 * MIB, "{s}");
    assert_eq!(v["live"], true, "{s}");
    let con = file("con2.txt");
    assert_eq!(
        numbers(&con, "SIZES-BEFORE"),
        [64 * MIB / 512, 64 * MIB / 512]
    );
    assert_eq!(
        numbers(&con, "SIZES-AFTER"),
        [128 * MIB / 512, 160 * MIB / 512]
    );
}

#[test]
fn resize2fs_grows_the_mounted_filesystems_and_they_hold_more_than_before() {
    let con = file("con2.txt");
    assert!(
        !con.contains("GUEST-MKFS-FAILED") && !con.contains("GUEST-MOUNT-FAILED"),
        "{con}"
    );
    for key in ["RESIZE2FS-A", "RESIZE2FS-B", "FILL-A", "FILL-B", "UMOUNT"] {
        assert_eq!(numbers(&con, key), [0], "{key}: {con}");
    }
    // an ext4 of 64 MiB has about 60 000 KiB; grown, well past 100 000
    let (a, b) = (numbers(&con, "DF-A")[0], numbers(&con, "DF-B")[0]);
    assert!(a > 100_000 && b > 130_000, "df: {a} {b} KiB: {con}");
    assert!(con.contains("GUEST-DONE"), "{con}");
}

#[test]
fn shrinking_and_an_unknown_disk_are_refused_with_the_reason() {
    let s = step("shrink-refused");
    assert!(s.contains("rc=1"), "{s}");
    assert!(s.contains("shrinking it to 33554432 is refused"), "{s}");
    assert!(s.contains("disk vda"), "names the disk: {s}");
    let s = step("grow-unknown");
    assert!(s.contains("rc=1") && s.contains("has no device vdz"), "{s}");
}

#[test]
fn shut_off_the_image_is_grown_by_svctl_and_qemu_img_finds_it_clean() {
    ok("destroy");
    assert!(ok("domstate-after").contains("shut off"));
    let s = ok("grow-offline");
    assert!(s.contains("Block device 'vdb' is resized"), "{s}");
    let info = step("qemu-img-info");
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 192 * MIB)),
        "{info}"
    );
    let check = step("qemu-img-check");
    assert!(
        check.contains("No errors were found") && check.contains("rc=0"),
        "{check}"
    );
    assert!(file("steps.txt").contains(&format!("RAW-SIZE {}", 128 * MIB)));
}

#[test]
fn nothing_is_left_running() {
    let s = step("leftovers");
    assert!(
        s.lines()
            .all(|l| l.starts_with("==") || l.trim().is_empty()),
        "{s}"
    );
}
