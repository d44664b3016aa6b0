//! The Generic Event Device (`\_SB_.GED_`, ACPI0013): how the vmm tells the guest that
//! something happened — the power button was pressed (`vm.shutdown`), a PCI slot changed
//! (`vm.add-device`, `vm.remove-device`).
//!
//! Hardware-reduced ACPI has no GPE block, so events go through the GED: its interrupt is an
//! IOAPIC pin fed by an irqfd; the guest's GED driver runs `_EVT`, which reads the event
//! register `GDAT` (read-and-clear, at [`GED_STATUS_START`]) and, per bit set, notifies the
//! power button `\_SB_.PWRB` (KEY_POWER to the guest's userspace: our guest init powers off
//! on it, systemd-logind or acpid do on a distribution) or scans the PCI slots
//! (`\_SB_.PHPR.PSCN`, [`crate::devices::pci_hotplug`]). Cloud Hypervisor's scheme, with its
//! bit values.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use vmm_sys_util::eventfd::EventFd;

pub use crate::layout::GED_STATUS_START;

/// The GED's interrupt: an ISA pin no other device uses (COM1 has 4).
pub const GED_IRQ: u32 = 5;
/// `GDAT` bit: a vCPU was added or is to be removed (`\_SB_.CPUS.CSCN`).
pub const EVENT_CPU: u32 = 1 << 0;
/// `GDAT` bit: a PCI slot changed (`\_SB_.PHPR.PSCN`).
pub const EVENT_PCI: u32 = 1 << 2;
/// `GDAT` bit: the power button was pressed.
pub const EVENT_POWER_BUTTON: u32 = 1 << 3;
/// The event register's size in bytes.
pub const GED_STATUS_SIZE: u64 = 4;

pub struct Ged {
    irq: EventFd,
    /// Events the guest has not read yet (`GDAT`).
    pending: AtomicU32,
    presses: AtomicU64,
}

impl Ged {
    /// `irq` must be registered as the irqfd of [`GED_IRQ`].
    pub fn new(irq: EventFd) -> Ged {
        Ged {
            irq,
            pending: AtomicU32::new(0),
            presses: AtomicU64::new(0),
        }
    }

    /// Raise `event` (one of the `EVENT_` bits).
    pub fn notify(&self, event: u32) -> std::io::Result<()> {
        self.pending.fetch_or(event, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// Press the ACPI power button.
    pub fn press(&self) -> std::io::Result<()> {
        self.presses.fetch_add(1, Ordering::Relaxed);
        tracing::info!("ACPI power button pressed");
        self.notify(EVENT_POWER_BUTTON)
    }

    pub fn presses(&self) -> u64 {
        self.presses.load(Ordering::Relaxed)
    }

    /// Forget every event (the machine resets).
    pub fn power_on_reset(&self) {
        self.pending.store(0, Ordering::SeqCst);
    }

    /// A guest read of the event register: the pending events, now cleared.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 && data.len() == 4 {
            let events = self.pending.swap(0, Ordering::SeqCst);
            data.copy_from_slice(&events.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_once_and_other_accesses_read_zero() {
        let ged = Ged::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        ged.press().unwrap();
        ged.notify(EVENT_PCI).unwrap();
        let mut b = [0xffu8; 2];
        ged.mmio_read(0, &mut b);
        assert_eq!(b, [0, 0], "a 2-byte read takes nothing");
        let mut d = [0u8; 4];
        ged.mmio_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), EVENT_PCI | EVENT_POWER_BUTTON);
        ged.mmio_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0, "read and cleared");
        assert_eq!(ged.presses(), 1);
        // the irqfd was signalled for each event
        assert_eq!(ged.irq.read().unwrap(), 2);
    }
}
