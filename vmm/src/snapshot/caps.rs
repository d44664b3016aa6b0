//! What this host's KVM can save and restore, probed once: a snapshot takes what is there
//! and never fails for an optional capability that is absent (a PVM host has no nested
//! state, for one); what a snapshot needs and the host lacks is refused with its name.

use kvm_ioctls::{Cap, Kvm, VmFd};

/// MTRRs are not in KVM's MSR index list but are guest state (the variable ranges, the fixed
/// ranges and the default type; MTRRcap is read-only).
const MTRR_MSRS: [u32; 28] = [
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c,
    0x20d, 0x20e, 0x20f, // variable ranges 0-7 (base, mask)
    0x250, 0x258, 0x259, // fixed 64K, 16K, 16K
    0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, // fixed 4K
    0x2ff, // default type
];

/// The capabilities a vCPU's save and restore depend on.
#[derive(Debug, Clone, Default)]
pub struct KvmCaps {
    /// KVM_GET_XSAVE2's buffer size in bytes (0: only the 4 KiB KVM_GET_XSAVE).
    pub xsave2_size: usize,
    pub xsave: bool,
    pub xcrs: bool,
    pub debugregs: bool,
    pub vcpu_events: bool,
    pub nested_state: bool,
    pub tsc_control: bool,
    pub get_tsc_khz: bool,
    pub immediate_exit: bool,
    /// The MSRs saved for each vCPU: KVM's list and the MTRRs.
    pub msrs: Vec<u32>,
}

impl KvmCaps {
    pub fn probe(kvm: &Kvm, vm: &VmFd) -> KvmCaps {
        let mut msrs: Vec<u32> = match kvm.get_msr_index_list() {
            Ok(list) => list.as_slice().to_vec(),
            Err(e) => {
                tracing::warn!("KVM lists no MSRs ({e}): a snapshot saves only the MTRRs");
                Vec::new()
            }
        };
        msrs.extend(MTRR_MSRS);
        msrs.sort_unstable();
        msrs.dedup();
        KvmCaps {
            xsave2_size: usize::try_from(vm.check_extension_int(Cap::Xsave2)).unwrap_or(0),
            xsave: vm.check_extension(Cap::Xsave),
            xcrs: vm.check_extension(Cap::Xcrs),
            debugregs: vm.check_extension(Cap::Debugregs),
            vcpu_events: vm.check_extension(Cap::VcpuEvents),
            nested_state: vm.check_extension(Cap::NestedState),
            tsc_control: vm.check_extension(Cap::TscControl),
            get_tsc_khz: vm.check_extension(Cap::GetTscKhz),
            immediate_exit: vm.check_extension(Cap::ImmediateExit),
            msrs,
        }
    }
}
