//! CPUID for each vCPU: what KVM supports (including its paravirt leaves 0x4000_0000+), with
//! the topology made consistent (APIC ids, logical processor counts, the hypervisor bit) and
//! the XSAVE leaf made to agree with the feature bits.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_FEATURES: u32 = 0x7;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
/// The legacy FXSAVE area plus the XSAVE header.
const XSAVE_LEGACY_SIZE: u32 = 512 + 64;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// ceil(log2(n)): bits an APIC id needs for `n` logical processors.
fn id_bits(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

/// vCPU `id`'s CPUID; `count`: the most vCPUs the VM may have (the topology must leave room
/// for the vCPUs added later: a running vCPU's CPUID cannot change).
pub fn for_vcpu(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    consistent_xsave(&mut cpuid);
    let (id, count) = (u32::from(id), u32::from(count));
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (count << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // cores per package - 1 in EAX[31:26] (6 bits); one thread per core
                e.eax = (e.eax & 0x03ff_c3ff) | ((count.min(64) - 1) << 26);
            }
            LEAF_EXT_TOPOLOGY => {
                // level 0: SMT (1 thread per core), level 1: cores (all vCPUs in one package)
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = id_bits(count);
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[7:0]: cores - 1; ECX[15:12]: APIC id bits
                e.ecx = (e.ecx & !0xf0ff) | (count - 1) | (id_bits(count) << 12);
            }
            _ => {}
        }
    }
    cpuid
}

/// Offer the LAPIC's TSC-deadline timer mode. KVM emulates it whenever it has
/// `KVM_CAP_TSC_DEADLINE_TIMER`, but KVM_GET_SUPPORTED_CPUID leaves the bit clear for the VMM
/// to set (QEMU, Firecracker and Cloud Hypervisor all do). Without it Linux falls back to the
/// LAPIC's one-shot count-down mode, which it has to calibrate at boot and reprogram through
/// two register writes (two exits) per timer: every idle entry and exit costs more (the guest
/// took 3-6x the local timer interrupts of the same guest under QEMU, see docs/benchmarks.md).
pub fn offer_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == LEAF_FEATURES {
            e.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

fn entry(cpuid: &CpuId, function: u32, index: u32) -> Option<kvm_bindings::kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
        .copied()
}

/// Make leaf 0xD offer only the XSAVE state components whose features leaves 1 and 7 offer,
/// and size it accordingly, as QEMU and Cloud Hypervisor derive this leaf from the feature
/// bits: a guest kernel sizes its FPU save area from the components it can use, and a CPUID
/// that offers more components than features makes it warn ("XSAVE consistency problem") and
/// fall back. (Under KVM nested in QEMU TCG the guest still warns: there the mismatch comes
/// from the emulated CPU itself.)
fn consistent_xsave(cpuid: &mut CpuId) {
    let leaf1 = entry(cpuid, LEAF_FEATURES, 0).unwrap_or_default();
    let leaf7 = entry(cpuid, LEAF_EXT_FEATURES, 0).unwrap_or_default();
    let mut allowed: u64 = 0b11; // x87, SSE
    let mut allow = |feature: bool, components: u64| {
        if feature {
            allowed |= components;
        }
    };
    allow(leaf1.ecx & (1 << 28) != 0, 1 << 2); // AVX: YMM upper halves
    allow(leaf7.ebx & (1 << 14) != 0, 0b11 << 3); // MPX: BNDREGS, BNDCSR
    allow(leaf7.ebx & (1 << 16) != 0, 0b111 << 5); // AVX-512: opmask, ZMM_Hi256, Hi16_ZMM
    allow(leaf7.ecx & (1 << 3) != 0, 1 << 9); // PKU: PKRU
    allow(leaf7.edx & (1 << 24) != 0, 0b11 << 17); // AMX: TILECFG, TILEDATA
                                                   // the user components that stay, with their (size, offset) from their own subleaves
    let mut end = XSAVE_LEGACY_SIZE;
    for e in cpuid.as_slice() {
        let i = e.index;
        if e.function == LEAF_XSAVE && (2..63).contains(&i) && allowed & (1 << i) != 0 {
            end = end.max(e.ebx.saturating_add(e.eax));
        }
    }
    for e in cpuid.as_mut_slice() {
        if e.function != LEAF_XSAVE {
            continue;
        }
        match e.index {
            0 => {
                e.eax &= allowed as u32;
                e.edx &= (allowed >> 32) as u32;
                e.ecx = end;
                e.ebx = e.ebx.min(end);
            }
            1 => {}
            i if i < 63 && allowed & (1 << i) == 0 && e.ecx & 1 == 0 => {
                // a user component we do not offer (supervisor ones, ECX bit 0, stay)
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn topology_leaves_follow_the_vcpu() {
        let base = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xdead_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ])
        .unwrap();
        let mut c = for_vcpu(&base, 3, 4);
        assert_eq!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        offer_tsc_deadline(&mut c);
        let leaf1 = c.as_slice()[0];
        assert!(leaf1.ecx & ECX_TSC_DEADLINE != 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_eq!(leaf1.ebx & 0xffff, 0x0800);
        assert!(leaf1.ecx & ECX_HYPERVISOR != 0);
        let leafb = c.as_slice()[1];
        assert_eq!((leafb.eax, leafb.ebx, leafb.edx), (2, 4, 3));
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(5), 3);
    }

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn xsave_components_follow_the_feature_bits() {
        // what KVM nested under QEMU TCG reported: AVX and PKRU in 0xD, neither in leaves 1/7
        let mut c = CpuId::from_entries(&[
            leaf(1, 0, 0, 0, 1 << 26, 0),
            leaf(7, 0, 0, 0, 0, 0),
            leaf(0xd, 0, 0x207, 0x240, 0xa88, 0),
            leaf(0xd, 1, 5, 0, 0, 0),
            leaf(0xd, 2, 0x100, 0x240, 0, 0),
            leaf(0xd, 9, 8, 0xa80, 0, 0),
        ])
        .unwrap();
        consistent_xsave(&mut c);
        let d0 = entry(&c, 0xd, 0).unwrap();
        assert_eq!((d0.eax, d0.ecx), (0b11, 576));
        assert_eq!(entry(&c, 0xd, 2).unwrap().eax, 0);
        assert_eq!(entry(&c, 0xd, 9).unwrap().eax, 0);
        assert_eq!(entry(&c, 0xd, 1).unwrap().eax, 5);
        // with AVX offered, its component stays and sizes the area
        let mut c = CpuId::from_entries(&[
            leaf(1, 0, 0, 0, (1 << 26) | (1 << 28), 0),
            leaf(0xd, 0, 0x207, 0x240, 0xa88, 0),
            leaf(0xd, 2, 0x100, 0x240, 0, 0),
            leaf(0xd, 9, 8, 0xa80, 0, 0),
        ])
        .unwrap();
        consistent_xsave(&mut c);
        let d0 = entry(&c, 0xd, 0).unwrap();
        assert_eq!((d0.eax, d0.ecx), (0b111, 0x340));
    }
}
