//! vCPU state for boot: CPUID, MSRs, FPU, LAPIC, and (for the boot vCPU) the registers,
//! segments and page tables the kernel's entry point expects.

mod cpuid;
pub use cpuid::offer_tsc_deadline;
mod gdt;
mod regs;

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::boot::EntryPoint;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("KVM rejected the CPUID of vCPU {0}")]
    Cpuid(u8, #[source] kvm_ioctls::Error),
    #[error("cannot set {what} of vCPU {id}")]
    Kvm {
        what: &'static str,
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {want} boot MSRs")]
    Msrs { set: usize, want: usize },
    #[error("cannot write the boot page tables or GDT: {0}")]
    Memory(String),
}

/// Give vCPU `id` of `count` its CPUID (once, before it first runs).
pub fn set_cpuid(vcpu: &VcpuFd, supported: &CpuId, id: u8, count: u8) -> Result<(), CpuError> {
    let cpuid = cpuid::for_vcpu(supported, id, count);
    vcpu.set_cpuid2(&cpuid).map_err(|e| CpuError::Cpuid(id, e))
}

/// Set up vCPU `id` for boot (at power-on and again at every reboot). Only the boot vCPU
/// (`entry` is `Some`) gets registers: the others wait for INIT/SIPI from the guest in the
/// in-kernel LAPIC.
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    mem: &GuestMemoryMmap,
    entry: Option<EntryPoint>,
) -> Result<(), CpuError> {
    regs::set_msrs(vcpu)?;
    regs::set_fpu(vcpu).map_err(|source| CpuError::Kvm {
        what: "the FPU",
        id,
        source,
    })?;
    regs::set_lint(vcpu).map_err(|source| CpuError::Kvm {
        what: "the LAPIC",
        id,
        source,
    })?;
    if let Some(entry) = entry {
        regs::set_boot_state(vcpu, mem, entry).map_err(|e| match e {
            regs::RegsError::Kvm(what, source) => CpuError::Kvm { what, id, source },
            regs::RegsError::Memory(m) => CpuError::Memory(m),
        })?;
    }
    Ok(())
}
