//! Every class of bad input gets one clear error line naming what was wrong, a non-zero exit
//! status, and never a panic. These checks all happen before KVM is used.

use std::process::Command;

struct Outcome {
    status: i32,
    stderr: String,
}

fn splitvisor(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args(args)
        .output()
        .expect("run splitvisor");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "splitvisor panicked: {stderr}"
    );
    Outcome {
        status: out.status.code().unwrap_or(-1),
        stderr,
    }
}

/// A file of its own for each call: the tests run in parallel.
fn tmp_file(name: &str, content: &[u8]) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sv-cli-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_string_lossy().into_owned()
}

/// A file that passes the kernel format check (an ELF header) but is not used further.
fn fake_kernel() -> String {
    tmp_file("vmlinux", b"\x7fELF\x02\x01\x01")
}

fn expect_error(args: &[&str], status: i32, needle: &str) {
    let out = splitvisor(args);
    assert_eq!(out.status, status, "args {args:?}: {}", out.stderr);
    assert!(
        out.stderr.contains(needle),
        "args {args:?}: expected {needle:?} in {:?}",
        out.stderr
    );
    if status == 1 {
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "one line: {:?}",
            out.stderr
        );
    }
}

#[test]
fn missing_kernel_file() {
    expect_error(
        &["--kernel", "/nonexistent/vmlinuz"],
        1,
        "cannot read the kernel /nonexistent/vmlinuz: No such file",
    );
}

#[test]
fn unreadable_kernel() {
    // a directory opens but cannot be read
    expect_error(&["--kernel", "/"], 1, "cannot read the kernel /");
}

#[test]
fn not_a_kernel() {
    let f = tmp_file(
        "notes.txt",
        b"just some text, certainly not a kernel image\n",
    );
    expect_error(&["--kernel", &f], 1, "is not a Linux kernel");
}

#[test]
fn no_kernel_at_all() {
    expect_error(&[], 1, "no kernel given");
}

#[test]
fn missing_initramfs() {
    let k = fake_kernel();
    expect_error(
        &["--kernel", &k, "--initramfs", "/nonexistent/initrd"],
        1,
        "cannot read the initramfs /nonexistent/initrd",
    );
}

#[test]
fn memory_too_small() {
    let k = fake_kernel();
    expect_error(
        &["--kernel", &k, "--memory", "16M"],
        1,
        "--memory 16M is too small",
    );
}

#[test]
fn memory_too_large_for_the_host() {
    let k = fake_kernel();
    expect_error(
        &["--kernel", &k, "--memory", "64T"],
        1,
        "more than this host's",
    );
}

#[test]
fn hugepages_without_free_huge_pages() {
    // one 2 MiB page more than the host has free, however many that is (the vmm counts a
    // missing file as none free)
    const FREE: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
    let free: u64 = match std::fs::read_to_string(FREE) {
        Ok(text) => text.trim().parse().expect("free_hugepages is a number"),
        Err(_) => 0,
    };
    let mib = ((free + 1) * 2).max(64); // 64 MiB: the smallest --memory
    let need = mib / 2;
    let k = fake_kernel();
    let out = splitvisor(&["--kernel", &k, "--memory", &format!("{mib}M,hugepages=on")]);
    assert_eq!(out.status, 1, "{}", out.stderr);
    // the count of free pages is the vmm's own reading: another process may take some meanwhile
    let message = out
        .stderr
        .trim()
        .strip_prefix(&format!(
            "splitvisor: error: hugepages=on needs {need} free 2 MiB huge pages but "
        ))
        .and_then(|rest| rest.strip_suffix(" are free: raise /proc/sys/vm/nr_hugepages"))
        .and_then(|free| free.parse::<u64>().ok());
    assert!(
        message.is_some_and(|free| free < need),
        "expected the huge page error for {need} pages, got {:?}",
        out.stderr
    );
}

#[test]
fn zero_cpus() {
    let k = fake_kernel();
    expect_error(
        &["--kernel", &k, "--cpus", "0"],
        1,
        "--cpus 0 is out of range",
    );
}

#[test]
fn unknown_option() {
    expect_error(
        &["--kernel", "/k", "--frobnicate"],
        2,
        "unexpected argument '--frobnicate'",
    );
}

#[test]
fn malformed_size_and_serial_options() {
    expect_error(&["--memory", "lots"], 2, "invalid size");
    expect_error(&["--serial", "tcp=1"], 2, "invalid --serial");
}

#[test]
fn malformed_json_config() {
    let f = tmp_file("bad.json", b"{\"kernel\": \"/k\", \"cpus\": ");
    expect_error(&["--config", &f], 1, "malformed config file");
    let f = tmp_file("unknown.json", b"{\"kernel\": \"/k\", \"vcpus\": 2}");
    expect_error(&["--config", &f], 1, "unknown field `vcpus`");
}

#[test]
fn missing_config_file() {
    expect_error(
        &["--config", "/nonexistent.json"],
        1,
        "cannot read the config file",
    );
}
