//! Whether this host can run the vCPUs a snapshot holds: every CPU feature the guest was
//! shown (and may be using: AVX-512, AMX …) must be one this host's KVM supports, or the
//! restored guest would fault on its next such instruction. Checked before anything runs;
//! the answer names the missing features by leaf, register and bit.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Reads one register of a CPUID entry.
type Register = fn(&kvm_cpuid_entry2) -> u32;

/// The feature words compared: (leaf, subleaf, register name, register).
const FEATURE_WORDS: &[(u32, u32, &str, Register)] = &[
    (0x1, 0, "ecx", |e| e.ecx),
    (0x1, 0, "edx", |e| e.edx),
    (0x7, 0, "ebx", |e| e.ebx),
    (0x7, 0, "ecx", |e| e.ecx),
    (0x7, 0, "edx", |e| e.edx),
    (0xd, 0, "eax", |e| e.eax), // XCR0: the state components XSAVE handles
    (0x8000_0001, 0, "ecx", |e| e.ecx),
    (0x8000_0001, 0, "edx", |e| e.edx),
];

/// Bits that are not the host's to offer: what the vmm sets itself (`cpu/cpuid.rs`: leaf 1
/// ECX's "hypervisor" (31) and TSC deadline timer (24, emulated by KVM's LAPIC), EDX's HTT
/// (28, the topology)), and what mirrors the guest's own CR4 (OSXSAVE, leaf 1 ECX 27; OSPKE,
/// leaf 7 ECX 4).
fn ignored(leaf: u32, reg: &str) -> u32 {
    match (leaf, reg) {
        (0x1, "ecx") => 1 << 31 | 1 << 27 | 1 << 24,
        (0x1, "edx") => 1 << 28,
        (0x7, "ecx") => 1 << 4,
        _ => 0,
    }
}

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && (e.index == subleaf || leaf != 0x7 && leaf != 0xd))
}

/// The features `saved` shows the guest that `supported` (what a vCPU set up here shows:
/// PVM's KVM shows more than KVM_GET_SUPPORTED_CPUID lists) lacks, e.g. "leaf 0x7 ebx bit
/// 16".
pub fn missing(saved: &[kvm_cpuid_entry2], supported: &CpuId) -> Vec<String> {
    let host = supported.as_slice();
    let mut out = Vec::new();
    for &(leaf, subleaf, reg, get) in FEATURE_WORDS {
        let Some(guest) = find(saved, leaf, subleaf) else {
            continue;
        };
        let have = find(host, leaf, subleaf).map_or(0, get);
        let lacking = get(guest) & !have & !ignored(leaf, reg);
        for bit in (0..32).filter(|b| lacking & (1 << b) != 0) {
            out.push(format!("leaf {leaf:#x} {reg} bit {bit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, ecx: u32, ebx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ecx,
            ebx,
            ..Default::default()
        }
    }

    #[test]
    fn a_feature_the_host_lacks_is_named_and_the_vmms_own_bits_are_not() {
        let host = CpuId::from_entries(&[entry(0x1, 0b1011, 0), entry(0x7, 0, 1 << 5)]).unwrap();
        let same = [
            entry(0x1, 0b1011 | 1 << 31 | 1 << 24, 0),
            entry(0x7, 0, 1 << 5),
        ];
        assert!(missing(&same, &host).is_empty());
        let more = [entry(0x1, 0b1111, 0), entry(0x7, 0, 1 << 5 | 1 << 16)];
        assert_eq!(
            missing(&more, &host),
            ["leaf 0x1 ecx bit 2", "leaf 0x7 ebx bit 16"]
        );
    }
}
