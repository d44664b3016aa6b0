//! The VM-wide state KVM holds in a snapshot: the two PICs and the IOAPIC (with their
//! pending interrupts and routing), the PIT, and the kvmclock. Read with every vCPU stopped
//! (the clock as the pause froze it); written to the new VM before any vCPU runs.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// The section version of [`PlatformState`].
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("cannot {what}")]
pub struct PlatformError {
    what: &'static str,
    #[source]
    source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> PlatformError {
    move |source| PlatformError { what, source }
}

#[derive(Serialize, Deserialize)]
pub struct PlatformState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    /// When `clock` was read (the pause froze it; ns since the Unix epoch): a restore moves
    /// the clock on by the time since.
    pub saved_at_unix_ns: u64,
}

/// Now, in ns since the Unix epoch.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The in-kernel interrupt controllers: PIC master, PIC slave, IOAPIC.
pub fn read_irqchips(vm: &VmFd) -> Result<Vec<kvm_irqchip>, kvm_ioctls::Error> {
    [
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ]
    .into_iter()
    .map(|chip_id| {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).map(|()| chip)
    })
    .collect()
}

/// Read the platform of a stopped VM; `clock`: the kvmclock as the pause froze it, at
/// `frozen_at_unix_ns`.
pub fn capture(
    vm: &VmFd,
    clock: kvm_clock_data,
    frozen_at_unix_ns: u64,
) -> Result<PlatformState, PlatformError> {
    Ok(PlatformState {
        irqchips: read_irqchips(vm).map_err(err("read the interrupt controllers"))?,
        pit: vm.get_pit2().map_err(err("read the PIT"))?,
        clock,
        saved_at_unix_ns: frozen_at_unix_ns,
    })
}

/// Write `s` to a new VM, its clock `elapsed_ns` later than it was saved (the time the
/// snapshot spent on disk: the guest's clocks then show the real time).
pub fn restore(vm: &VmFd, s: &PlatformState, elapsed_ns: u64) -> Result<(), PlatformError> {
    for chip in &s.irqchips {
        vm.set_irqchip(chip)
            .map_err(err("restore the interrupt controllers"))?;
    }
    vm.set_pit2(&s.pit).map_err(err("restore the PIT"))?;
    let clock = kvm_clock_data {
        clock: s.clock.clock.saturating_add(elapsed_ns),
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(err("restore the clock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_comes_back_in_another_vm_with_its_clock_moved_on() {
        let kvm = kvm_ioctls::Kvm::new()
            .expect("/dev/kvm is missing or inaccessible: this test creates VMs");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(Default::default()).unwrap();
        // a guest-visible change: the IOAPIC's ID register
        let mut chips = read_irqchips(&vm).unwrap();
        // chip 2 is the IOAPIC (KVM_IRQCHIP_IOAPIC): `ioapic` is the union's member in use
        chips[2].chip.ioapic.id = 5 << 24;
        vm.set_irqchip(&chips[2]).unwrap();
        let s = capture(&vm, vm.get_clock().unwrap(), unix_ns()).unwrap();
        let bytes = serde_json::to_vec(&s).unwrap();
        let s: PlatformState = serde_json::from_slice(&bytes).unwrap();

        let vm2 = kvm.create_vm().unwrap();
        vm2.create_irq_chip().unwrap();
        vm2.create_pit2(Default::default()).unwrap();
        restore(&vm2, &s, 3_000_000_000).unwrap();
        let back = read_irqchips(&vm2).unwrap();
        // SAFETY: as above, the IOAPIC's member.
        assert_eq!(unsafe { back[2].chip.ioapic.id }, 5 << 24);
        let clock = vm2.get_clock().unwrap().clock;
        assert!(
            clock >= s.clock.clock + 3_000_000_000,
            "{clock} vs {}",
            s.clock.clock
        );
    }
}
