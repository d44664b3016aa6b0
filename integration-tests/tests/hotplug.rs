//! PCI hotplug (issue 29, item 1) inside the nested-KVM sandbox: a guest that booted without
//! disks gets one (`vm.add-device`, a splitvisor-blk process), makes an ext4 on it and writes
//! a file; the disk is removed (`vm.remove-device`: the guest ejects it, /dev/vda goes away),
//! added again and the file reads back. Then add/remove cycles: the vmm's descriptors,
//! threads, GSIs and MSI routes stay flat. Bad requests get the reason.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

/// How many add/remove cycles the leak check runs (`svctl_attach` runs 100 through svctl).
const CYCLES: u32 = 10;

const GUEST: &str = r#"
w() { i=0; while ! eval "$1" && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done; }
echo GUEST-UP
w '[ -b /dev/vda ]'
echo "VDA-ADDED $(cat /sys/block/vda/size)"
mkdir -p /m
mkfs.ext4 -q -F /dev/vda && mount -t ext4 /dev/vda /m && echo hotplugged > /m/f && umount /m
echo "GUEST-WROTE rc=$?"
w '[ ! -b /dev/vda ]'
echo VDA-GONE
w '[ -b /dev/vda ]'
mount -t ext4 /dev/vda /m && echo "READ-BACK $(cat /m/f)" && umount /m
echo GUEST-READ-DONE
w '[ ! -b /dev/vda ]'
echo VDA-GONE-AGAIN
sleep 3600
"#;

const JOB: &str = r#"
W=/tmp/w
mkdir -p $W
L1=$JOB/l1.txt
api() { # api METHOD ENDPOINT JSON: the body, then "HTTP <code>"
    curl -sS --max-time 60 --unix-socket $W/api.sock -X "$1" -H 'Content-Type: application/json' \
        -d "$3" -w '\nHTTP %{http_code}\n' "http://localhost/api/v1/$2"
}
truncate -s 64M $W/data.img
start_blk data $W $W/data.img
RUST_LOG=warn,vmm::hotplug=info,vmm::devices=info splitvisor --kernel $L2_KERNEL \
    --initramfs $KIT/l2/initramfs.cpio.gz --memory 256M \
    --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64" --api-socket $W/api.sock \
    </dev/null >"$JOB/vm.log" 2>"$JOB/vmm.log" &
VMM=$!
wait_for GUEST-UP "$JOB/vm.log" 300 || echo "NO-GUEST-UP" >> $L1
DEV='{"device": "vhost-user,type=blk,id=data,socket='$W'/data.sock"}'
api PUT vm.add-device "$DEV" > $JOB/add1.txt
wait_for GUEST-WROTE "$JOB/vm.log" 120 || echo "NO-GUEST-WROTE" >> $L1
api GET vm.info '' > $JOB/info-added.txt
api PUT vm.remove-device '{"id": "data"}' > $JOB/remove1.txt
wait_for VDA-GONE "$JOB/vm.log" 60 || echo "NO-VDA-GONE" >> $L1
api PUT vm.add-device "$DEV" > $JOB/add2.txt
wait_for GUEST-READ-DONE "$JOB/vm.log" 120 || echo "NO-READ-DONE" >> $L1
api PUT vm.remove-device '{"id": "data"}' > $JOB/remove2.txt
wait_for VDA-GONE-AGAIN "$JOB/vm.log" 60 || echo "NO-VDA-GONE-AGAIN" >> $L1
# bad requests
api PUT vm.remove-device '{"id": "nothing"}' > $JOB/remove-unknown.txt
api PUT vm.add-device '{"device": "vhost-user,type=blk"}' > $JOB/add-bad.txt
api PUT vm.add-device '{"device": "vhost-user,type=blk,socket='$W'/none.sock"}' > $JOB/add-nobackend.txt
# cycles: descriptors and threads of the vmm after each (the console is vm.log, the vmm's own
# log vmm.log: a log line written into the middle of a console line would hide its marker)
ls -l /proc/$BLK_PID/fd > $JOB/blk-fds-before.txt 2>&1
i=0
while [ $i -lt $CYCLES ]; do
    i=$((i + 1))
    api PUT vm.add-device "$DEV" > $JOB/cycle-add.txt
    grep -q 'HTTP 200' $JOB/cycle-add.txt || { echo "CYCLE-ADD-FAILED $i $(cat $JOB/cycle-add.txt)" >> $L1; break; }
    sleep 1
    api PUT vm.remove-device '{"id": "data"}' > $JOB/cycle-remove.txt
    grep -q 'HTTP 204' $JOB/cycle-remove.txt || { echo "CYCLE-REMOVE-FAILED $i $(cat $JOB/cycle-remove.txt)" >> $L1; break; }
    sleep 0.5
    echo "CYCLE $i fds $(ls /proc/$VMM/fd | wc -l) threads $(ls /proc/$VMM/task | wc -l) blkfds $(ls /proc/$BLK_PID/fd | wc -l)" >> $L1
done
api GET vm.info '' > $JOB/info-end.txt
ls -l /proc/$BLK_PID/fd > $JOB/blk-fds-after.txt 2>&1
kill -TERM $VMM
finish_case vm $VMM 60
kill -TERM $BLK_PID; wait $BLK_PID
echo "BLK-EXIT $?" >> $L1
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(900))
            .host_tool("curl")
            .run(&format!(
                "{GUEST_SH}\nGUEST64={}\nCYCLES={CYCLES}\n{JOB}",
                guest::base64(GUEST.as_bytes())
            ))
    })
}

fn file(name: &str) -> String {
    job().file(name).unwrap_or_default()
}

/// The console, with what the job noticed.
fn context() -> String {
    format!(
        "l1.txt:\n{}\nvm.log (the console):\n{}\nvmm.log:\n{}",
        file("l1.txt"),
        file("vm.log"),
        file("vmm.log")
    )
}

#[test]
fn the_script_fits_the_kernel_command_line() {
    guest::assert_fits_command_line(GUEST);
}

#[test]
fn an_added_disk_is_seen_written_removed_and_its_data_stays() {
    let add = file("add1.txt");
    assert!(add.contains("HTTP 200"), "{add}\n{}", context());
    assert!(
        add.contains(r#""id":"data""#) && add.contains(r#""bdf":"0000:00:01.0""#),
        "{add}"
    );
    let log = file("vm.log");
    assert!(log.contains("VDA-ADDED 131072"), "{}", context());
    assert!(log.contains("GUEST-WROTE rc=0"), "{}", context());
    assert!(
        file("info-added.txt").contains(r#""name":"data""#),
        "{}",
        file("info-added.txt")
    );
    assert!(
        file("remove1.txt").contains("HTTP 204"),
        "{}",
        file("remove1.txt")
    );
    assert!(log.contains("VDA-GONE"), "{}", context());
    assert!(
        file("add2.txt").contains("HTTP 200"),
        "{}",
        file("add2.txt")
    );
    assert!(log.contains("READ-BACK hotplugged"), "{}", context());
    assert!(
        file("remove2.txt").contains("HTTP 204"),
        "{}",
        file("remove2.txt")
    );
    assert!(log.contains("VDA-GONE-AGAIN"), "{}", context());
    assert!(
        !file("info-end.txt").contains(r#""name":"data""#),
        "{}",
        file("info-end.txt")
    );
}

#[test]
fn bad_requests_get_the_reason() {
    let r = file("remove-unknown.txt");
    assert!(
        r.contains("HTTP 404") && r.contains("no device nothing"),
        "{r}"
    );
    let r = file("add-bad.txt");
    assert!(
        r.contains("HTTP 400") && r.contains("invalid device"),
        "{r}"
    );
    let r = file("add-nobackend.txt");
    assert!(
        r.contains("HTTP 502") && r.contains("cannot connect to its backend"),
        "{r}"
    );
}

#[test]
fn add_remove_cycles_leak_nothing() {
    let l1 = file("l1.txt");
    let rows: Vec<Vec<u64>> = l1
        .lines()
        .filter(|l| l.starts_with("CYCLE "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), CYCLES as usize, "{}", context());
    // cycle, fds, threads, blk backend's fds: the same after the second cycle as after the last
    let (first, last) = (&rows[1], &rows[rows.len() - 1]);
    assert_eq!(first[1..], last[1..], "fds/threads grew: {l1}");
}

#[test]
fn the_vmm_and_the_backend_end_cleanly() {
    let l1 = file("l1.txt");
    assert!(!l1.contains("NO-"), "{}", context());
    assert!(l1.contains("BLK-EXIT 0"), "{l1}");
    assert!(!file("vmm.log").contains("panicked"), "{}", context());
}
