//! CPUID for each vCPU: what KVM supports (including its paravirt leaves 0x4000_0000+), with
//! the topology made consistent: APIC ids, logical processor counts, the hypervisor bit.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// ceil(log2(n)): bits an APIC id needs for `n` logical processors.
fn id_bits(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

pub fn for_vcpu(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
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
                // cores per package - 1 in EAX[31:26]; one thread per core
                e.eax = (e.eax & 0x03ff_c3ff) | ((count - 1) << 26);
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
        let c = for_vcpu(&base, 3, 4);
        let leaf1 = c.as_slice()[0];
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_eq!(leaf1.ebx & 0xffff, 0x0800);
        assert!(leaf1.ecx & ECX_HYPERVISOR != 0);
        let leafb = c.as_slice()[1];
        assert_eq!((leafb.eax, leafb.ebx, leafb.edx), (2, 4, 3));
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(5), 3);
    }
}
