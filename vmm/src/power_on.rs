//! In-place reboot. The machine's power-on state — the in-kernel PIC, IOAPIC and PIT, and each
//! vCPU's registers, LAPIC, MP state and pending events — is saved before the first `KVM_RUN`
//! and put back when the guest resets. The same KVM VM, guest memory, devices and backend
//! connections then boot the kernel again, as QEMU does (a VMM that cannot do this must exit
//! on every reboot and lose its backends' connections).

use kvm_bindings::{
    kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_vcpu_events, Msrs,
};
use kvm_ioctls::{VcpuFd, VmFd};

/// Paravirtual MSRs that make KVM write into guest memory (kvmclock, steal time, async page
/// faults, PV EOI). A rebooted guest's new kernel has other data at those addresses, so they
/// are switched off before it runs; the new kernel enables them again.
const PV_MSRS_OFF_AT_RESET: [u32; 6] = [
    0x12,        // MSR_KVM_SYSTEM_TIME
    0x4b56_4d01, // MSR_KVM_SYSTEM_TIME_NEW
    0x4b56_4d02, // MSR_KVM_ASYNC_PF_EN
    0x4b56_4d03, // MSR_KVM_STEAL_TIME
    0x4b56_4d04, // MSR_KVM_PV_EOI_EN
    0x4b56_4d06, // MSR_KVM_ASYNC_PF_INT
];

#[derive(Debug, thiserror::Error)]
#[error("cannot {what} for the reboot")]
pub struct PowerOnError {
    what: String,
    #[source]
    source: kvm_ioctls::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> PowerOnError {
    let what = what.into();
    move |source| PowerOnError { what, source }
}

/// One vCPU's power-on state (a vCPU added while the guest runs keeps its own: it is reset
/// with it when it is added again).
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
}

impl VcpuState {
    /// vCPU `id`'s state now (after its CPUID is set and before it is configured).
    pub fn save(id: usize, vcpu: &VcpuFd) -> Result<VcpuState, PowerOnError> {
        let e = |what: &str| err(format!("save {what} of vCPU {id}"));
        Ok(VcpuState {
            regs: vcpu.get_regs().map_err(e("the registers"))?,
            sregs: vcpu.get_sregs().map_err(e("the segment registers"))?,
            fpu: vcpu.get_fpu().map_err(e("the FPU"))?,
            lapic: vcpu.get_lapic().map_err(e("the LAPIC"))?,
            mp_state: vcpu.get_mp_state().map_err(e("the MP state"))?,
            events: vcpu.get_vcpu_events().map_err(e("the pending events"))?,
        })
    }

    /// Put vCPU `id` back to this state; the caller then configures it for boot again.
    pub fn restore(&self, id: usize, vcpu: &VcpuFd) -> Result<(), PowerOnError> {
        let e = |what: &str| err(format!("reset {what} of vCPU {id}"));
        let s = self;
        // the APIC base (in sregs) first: it decides how the LAPIC registers are read
        vcpu.set_sregs(&s.sregs)
            .map_err(e("the segment registers"))?;
        vcpu.set_lapic(&s.lapic).map_err(e("the LAPIC"))?;
        vcpu.set_regs(&s.regs).map_err(e("the registers"))?;
        vcpu.set_fpu(&s.fpu).map_err(e("the FPU"))?;
        vcpu.set_vcpu_events(&s.events)
            .map_err(e("the pending events"))?;
        vcpu.set_mp_state(s.mp_state).map_err(e("the MP state"))?;
        for index in PV_MSRS_OFF_AT_RESET {
            let entry = kvm_msr_entry {
                index,
                data: 0,
                ..Default::default()
            };
            // one at a time: KVM stops at the first MSR it does not know
            let known = Msrs::from_entries(&[entry])
                .ok()
                .and_then(|m| vcpu.set_msrs(&m).ok());
            if known != Some(1) {
                tracing::debug!(vcpu = id, msr = index, "paravirtual MSR not reset");
            }
        }
        Ok(())
    }
}

/// Everything KVM holds about the machine outside guest memory, as it was at power-on.
pub struct PowerOnState {
    chips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
    vcpus: Vec<VcpuState>,
}

impl PowerOnState {
    /// Save the interrupt controllers and the PIT (call right after creating them).
    pub fn save_platform(vm: &VmFd) -> Result<PowerOnState, PowerOnError> {
        let chips = crate::snapshot::platform::read_irqchips(vm)
            .map_err(err("save the interrupt controllers"))?;
        let pit = vm.get_pit2().map_err(err("save the PIT"))?;
        Ok(PowerOnState {
            chips,
            pit,
            vcpus: Vec::new(),
        })
    }

    /// Save the next vCPU (ids in order), after its CPUID is set and before it is configured.
    pub fn save_vcpu(&mut self, vcpu: &VcpuFd) -> Result<(), PowerOnError> {
        let state = VcpuState::save(self.vcpus.len(), vcpu)?;
        self.vcpus.push(state);
        Ok(())
    }

    pub fn restore_platform(&self, vm: &VmFd) -> Result<(), PowerOnError> {
        for chip in &self.chips {
            vm.set_irqchip(chip)
                .map_err(err("reset the interrupt controllers"))?;
        }
        vm.set_pit2(&self.pit).map_err(err("reset the PIT"))
    }

    /// Put vCPU `id` back to its power-on state; the caller then configures it for boot again.
    pub fn restore_vcpu(&self, id: usize, vcpu: &VcpuFd) -> Result<(), PowerOnError> {
        let Some(s) = self.vcpus.get(id) else {
            return Err(PowerOnError {
                what: format!("find the power-on state of vCPU {id}"),
                source: kvm_ioctls::Error::new(libc::ENOENT),
            });
        };
        s.restore(id, vcpu)
    }
}
