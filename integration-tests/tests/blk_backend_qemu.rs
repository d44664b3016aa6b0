//! splitvisor-blk under a frontend nobody here wrote: QEMU (TCG, on the host) boots the guest
//! kit kernel with `vhost-user-blk-pci` on our backend's socket. The guest runs a verifying fio
//! job on both queues and writes a pattern the host then finds in the image; the disk's serial
//! and queue count reach the guest; SIGUSR1 makes the backend log its counters.

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

const JOB: &str = r#"
W=$JOB/w
mkdir -p $W
truncate -s 64M $W/raw.img
start_blk raw $W $W/raw.img --queues 2 --serial SV-RAW-1
BLK=$BLK_PID
qemu_case() { # qemu_case NAME TIMEOUT SOCKET
    qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 512M -nodefaults -no-user-config \
        -display none -serial stdio -no-reboot \
        -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \
        -chardev socket,id=blk,path=$3 -device vhost-user-blk-pci,chardev=blk,num-queues=2 \
        -kernel $KIT/l2/vmlinuz -initrd $KIT/l2/initramfs.cpio.gz \
        -append "console=ttyS0 quiet sv.cmd64=$GUEST64" </dev/null >"$JOB/$1.log" 2>&1 &
    finish_case "$1" $! "$2"
}
qemu_case raw 400 $W/raw.sock
kill -USR1 $BLK; sleep 1
kill -TERM $BLK; wait $BLK
echo "HOST-BLK-EXIT $?" >> "$JOB/host.txt"
echo "HOST-READ-MD5 $(dd if=$W/raw.img bs=65536 skip=512 count=16 2>/dev/null | md5sum | cut -d' ' -f1)" >> "$JOB/host.txt"
[ -e $W/raw.sock ] && echo "HOST-SOCKET-LEFT" >> "$JOB/host.txt"
rm -rf $W
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        let guest64 = guest::base64((guest::vda_fio_verify(8) + GUEST).as_bytes());
        Sandbox::new()?
            .on_host()
            .timeout(Duration::from_secs(600))
            .run(&format!("{GUEST_SH}\nGUEST64={guest64}\n{JOB}"))
    })
}

fn raw_log() -> String {
    job().file("raw.log").unwrap_or_default()
}

#[test]
fn qemu_boots_on_our_backend_and_fio_verify_passes_on_two_queues() {
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
