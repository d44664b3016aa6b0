//! splitvisor boots the Debian cloud kernel under real KVM (inside the nested-KVM sandbox):
//! bzImage and ELF/PVH, 1 and 2 vCPUs, the guest sees the configured CPUs and memory, guest
//! poweroff ends splitvisor with 0, reboot with 3 under --on-reboot exit, SIGTERM with 5, and the serial console is
//! interactive; default guest RAM is in 2 MiB pages. All cases run in one L1 job; each property
//! is its own test.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

const JOB: &str = r#"
CMD="console=ttyS0 quiet"
boot_case bz1 150 --kernel $L2_KERNEL --initramfs $L2_INITRD --cmdline "$CMD sv.cmd=nproc" --cpus 1 --memory 512M
boot_case bz2 150 --kernel $L2_KERNEL --initramfs $L2_INITRD --cmdline "$CMD sv.cmd=nproc" --cpus 2 --memory 1G
boot_case elf1 150 --kernel $L2_ELF --initramfs $L2_INITRD --cmdline "$CMD sv.cmd=nproc" --cpus 1 --memory 768M
boot_case elf2 150 --kernel $L2_ELF --initramfs $L2_INITRD --cmdline "$CMD sv.cmd=nproc" --cpus 2 --memory 512M
boot_case reboot 150 --kernel $L2_KERNEL --initramfs $L2_INITRD --cmdline "$CMD sv.cmd64=$(b64 'reboot -f')" --memory 256M --on-reboot exit

# SIGTERM while the guest sits at its shell; before it, the RAM mode the default chose and
# what of guest RAM the vmm has mapped in 2 MiB pages
splitvisor --kernel $L2_KERNEL --initramfs $L2_INITRD --cmdline "$CMD" --memory 256M \
    --api-socket /tmp/sigterm.api </dev/null >"$JOB/sigterm.log" 2>&1 &
pid=$!
wait_for SPLITVISOR-GUEST-READY "$JOB/sigterm.log" 150 && sleep 1
curl -sS --max-time 30 --unix-socket /tmp/sigterm.api http://localhost/api/v1/vm.info \
    >"$JOB/sigterm-info.json" 2>&1
grep -E "^(ShmemPmdMapped|FilePmdMapped|Shared_Hugetlb):" /proc/$pid/smaps_rollup \
    >"$JOB/sigterm-smaps.txt"
kill -TERM $pid
finish_case sigterm $pid 30

# the console is interactive: type a command, read its output back, power off from the shell
rm -f /tmp/console-in && mkfifo /tmp/console-in
splitvisor --kernel $L2_KERNEL --initramfs $L2_INITRD --cmdline "$CMD" --memory 256M </tmp/console-in >"$JOB/interactive.log" 2>&1 &
pid=$!
exec 3>/tmp/console-in
wait_for SPLITVISOR-GUEST-READY "$JOB/interactive.log" 150 && sleep 2
echo 'echo TYPED-$((6 * 7))' >&3
wait_for TYPED-42 "$JOB/interactive.log" 30
echo 'poweroff -f' >&3
finish_case interactive $pid 60
exec 3>&-
"#;

/// The L1 job, run once for all the tests here.
fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    // the job takes ~150 s; well past that, L1 is frozen (see shared_job)
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(480))
            .host_tool("curl")
            .run(&format!("{GUEST_SH}\n{JOB}"))
    })
}

struct Case {
    rc: String,
    log: String,
}

fn case(name: &str) -> Case {
    let out = job();
    Case {
        rc: out
            .file(&format!("{name}.rc"))
            .unwrap_or_default()
            .trim()
            .to_string(),
        log: out.file(&format!("{name}.log")).unwrap_or_default(),
    }
}

/// The guest booted to its init marker with the configured vCPUs and memory, ran its command
/// and powered off, and splitvisor exited 0.
fn assert_booted(name: &str, cpus: u32, memory_mib: u64) {
    let c = case(name);
    let ready = guest::ready(&c.log)
        .unwrap_or_else(|| panic!("{name}: no SPLITVISOR-GUEST-READY marker:\n{}", c.log));
    assert_eq!(ready.nproc, cpus, "{name}: nproc in the guest");
    let configured_kb = memory_mib * 1024;
    assert!(
        ready.memtotal_kb <= configured_kb && ready.memtotal_kb >= configured_kb * 85 / 100,
        "{name}: MemTotal {} kB for --memory {memory_mib}M",
        ready.memtotal_kb
    );
    assert_eq!(
        guest::guest_exit(&c.log),
        Some(0),
        "{name}: guest command status"
    );
    assert_eq!(
        c.rc, "0",
        "{name}: splitvisor's exit status after guest poweroff\n{}",
        c.log
    );
}

#[test]
fn bzimage_boots_with_one_vcpu() {
    assert_booted("bz1", 1, 512);
}

#[test]
fn bzimage_boots_with_two_vcpus() {
    assert_booted("bz2", 2, 1024);
}

#[test]
fn elf_vmlinux_boots_through_pvh_with_one_vcpu() {
    assert_booted("elf1", 1, 768);
}

#[test]
fn elf_vmlinux_boots_through_pvh_with_two_vcpus() {
    assert_booted("elf2", 2, 512);
}

#[test]
fn guest_reboot_with_on_reboot_exit_ends_with_status_3() {
    let c = case("reboot");
    assert!(
        guest::ready(&c.log).is_some(),
        "guest did not boot:\n{}",
        c.log
    );
    assert_eq!(c.rc, "3", "{}", c.log);
}

#[test]
fn sigterm_stops_the_vm_with_status_5() {
    let c = case("sigterm");
    assert!(
        guest::ready(&c.log).is_some(),
        "guest did not boot:\n{}",
        c.log
    );
    assert_eq!(c.rc, "5", "{}", c.log);
}

#[test]
fn serial_console_is_interactive() {
    let c = case("interactive");
    assert!(
        guest::ready(&c.log).is_some(),
        "guest did not boot:\n{}",
        c.log
    );
    // the guest's shell echoes what we typed and prints the result it computed
    assert!(c.log.contains("echo TYPED-$((6 * 7))"), "{}", c.log);
    assert!(
        c.log.lines().any(|l| l.trim() == "TYPED-42"),
        "the typed command's output is missing:\n{}",
        c.log
    );
    assert_eq!(c.rc, "0", "poweroff typed on the console: {}", c.log);
}

/// With default options guest RAM is in 2 MiB pages (a stock L1: `shmem_enabled` is `never`,
/// so a private huge tmpfs), `vm.info` says so, and the booted guest's RAM is PMD-mapped.
#[test]
fn default_guest_ram_is_in_2_mib_pages_and_vm_info_says_so() {
    let out = job();
    let info = out.file("sigterm-info.json").unwrap_or_default();
    let info: serde_json::Value =
        serde_json::from_str(&info).unwrap_or_else(|e| panic!("vm.info is not JSON ({e}): {info}"));
    assert_eq!(info["ram_pages"], "2M-thp", "{info}");
    let smaps = out.file("sigterm-smaps.txt").unwrap_or_default();
    let kib = |field: &str| -> u64 {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {smaps}"))
    };
    let pmd = kib("ShmemPmdMapped:") + kib("FilePmdMapped:");
    // a booted 256 MiB guest has touched well over 16 MiB of its RAM
    assert!(
        pmd >= 16 << 10,
        "{pmd} kB of guest RAM PMD-mapped:\n{smaps}"
    );
}
