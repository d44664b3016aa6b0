//! The ACPI power button: how `vm.shutdown` asks the guest to power off by itself.
//!
//! Hardware-reduced ACPI has no PM1 event block, so the button is a control-method device
//! (`\_SB_.PWRB`, PNP0C0C) behind a Generic Event Device (`\_SB_.GED_`, ACPI0013) whose
//! interrupt is an IOAPIC pin fed by an irqfd: a press raises the interrupt, the guest's GED
//! driver runs `_EVT`, which does `Notify (PWRB, 0x80)`, and the guest's button driver reports
//! KEY_POWER to its userspace (our guest init powers off on it; systemd-logind or acpid do
//! the same on a distribution guest). This is the scheme Cloud Hypervisor uses.

use std::sync::atomic::{AtomicU64, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// The GED's interrupt: an ISA pin no other device uses (COM1 has 4).
pub const GED_IRQ: u32 = 5;

pub struct PowerButton {
    irq: EventFd,
    presses: AtomicU64,
}

impl PowerButton {
    /// `irq` must be registered as the irqfd of [`GED_IRQ`].
    pub fn new(irq: EventFd) -> PowerButton {
        PowerButton {
            irq,
            presses: AtomicU64::new(0),
        }
    }

    pub fn press(&self) -> std::io::Result<()> {
        self.presses.fetch_add(1, Ordering::Relaxed);
        tracing::info!("ACPI power button pressed");
        self.irq.write(1)
    }

    pub fn presses(&self) -> u64 {
        self.presses.load(Ordering::Relaxed)
    }
}
