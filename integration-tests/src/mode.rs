//! Where a real-guest test runs: inside the nested-KVM sandbox, or directly on the host.

use std::path::Path;

/// How tests reach a KVM that can boot Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inside L1 under QEMU TCG (works on any x86-64 host, including PVM ones).
    Sandbox,
    /// On the host itself: only when its `/dev/kvm` is hardware-backed.
    Direct,
}

impl Mode {
    /// `SPLITVISOR_SANDBOX=always|never|auto` (default auto: direct only on hardware KVM).
    pub fn from_env() -> Mode {
        match std::env::var("SPLITVISOR_SANDBOX").as_deref() {
            Ok("always") => Mode::Sandbox,
            Ok("never") => Mode::Direct,
            _ if host_kvm_is_hardware() => Mode::Direct,
            _ => Mode::Sandbox,
        }
    }
}

/// True when the host has VMX/SVM and its KVM is not the PVM software vendor.
pub fn host_kvm_is_hardware() -> bool {
    if !Path::new("/dev/kvm").exists() || Path::new("/sys/module/kvm_pvm").exists() {
        return false;
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| {
            info.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}
