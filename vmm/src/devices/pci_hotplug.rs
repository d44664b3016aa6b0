//! The PCI hotplug controller (`\_SB_.PHPR` in the DSDT, 16 bytes at
//! [`crate::layout::PCI_HOTPLUG_START`]): ACPI PCI hotplug as Cloud Hypervisor and QEMU's
//! i440fx do it, driven by the guest's acpiphp.
//!
//! ```text
//! 0x0  PCIU  read: slots that got a device since the last read (read-and-clear)
//! 0x4  PCID  read: slots whose device is to be ejected (read-and-clear)
//! 0x8  B0EJ  write: the guest ejected the devices of these slots (`_EJ0`)
//! 0xc  PSEG  write: the PCI segment of the next access (only 0)
//! ```
//!
//! Adding: the device goes on the bus, its slot's bit into PCIU, and the GED raises its PCI
//! event; `_EVT` runs `PCNT`, which notifies each slot in PCIU with "device check" (Linux
//! scans the slot, assigns the BARs and binds virtio-pci) and each slot in PCID with "eject
//! request" (Linux unbinds the driver — the virtio device is reset — and calls the slot's
//! `_EJ0`, which writes B0EJ). The write takes the device off the bus at once (the vCPU does
//! no more than that) and wakes [`PciHotplug::wait_ejected`]'s caller, which tears the
//! device down off the vCPU thread.
//!
//! Only 4-byte accesses do anything: a guest cannot make the vmm misread a register.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::pci::bus::MAX_SLOTS;

/// The controller's size in bytes.
pub const PCI_HOTPLUG_SIZE: u64 = 16;
const PCIU: u64 = 0x0;
const PCID: u64 = 0x4;
const B0EJ: u64 = 0x8;
const PSEG: u64 = 0xc;

#[derive(Default)]
pub struct PciHotplug {
    /// Slots with a new device the guest has not been told of yet.
    up: AtomicU32,
    /// Slots whose device the guest is asked to eject and has not been told of yet.
    down: AtomicU32,
    /// Slots whose device the guest was asked to eject and has not yet: the only slots an
    /// eject (B0EJ) takes (a guest cannot pull a device nobody asked it to give back).
    requested: AtomicU32,
    /// Slots the guest ejected, not yet taken by the remover.
    ejected: Mutex<u32>,
    ejected_cond: Condvar,
}

/// The bit of `slot` in the slot masks; slot 0 (the host bridge) and slots out of range have
/// none.
fn bit(slot: usize) -> u32 {
    if (1..MAX_SLOTS).contains(&slot) {
        1 << slot
    } else {
        0
    }
}

impl PciHotplug {
    /// A device was put in `slot`: tell the guest at its next scan.
    pub fn announce_added(&self, slot: usize) {
        self.forget_ejected(slot);
        self.up.fetch_or(bit(slot), Ordering::SeqCst);
    }

    /// Ask the guest to eject `slot`'s device at its next scan.
    pub fn request_eject(&self, slot: usize) {
        self.forget_ejected(slot);
        self.requested.fetch_or(bit(slot), Ordering::SeqCst);
        self.down.fetch_or(bit(slot), Ordering::SeqCst);
    }

    /// Whether the guest ejected `slot` and nobody took it yet (an eject that came after
    /// its waiter gave up).
    pub fn ejected(&self, slot: usize) -> bool {
        *self.ejected.lock().unwrap_or_else(|e| e.into_inner()) & bit(slot) != 0
    }

    fn forget_ejected(&self, slot: usize) {
        *self.ejected.lock().unwrap_or_else(|e| e.into_inner()) &= !bit(slot);
    }

    /// Whether the guest has yet to read an addition or eject request.
    pub fn pending(&self) -> bool {
        self.up.load(Ordering::SeqCst) | self.down.load(Ordering::SeqCst) != 0
    }

    /// Wait until the guest ejects `slot` (true) or `timeout` passes (false). Takes the slot's
    /// eject: a second caller does not see it.
    pub fn wait_ejected(&self, slot: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ejected = self.ejected.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *ejected & bit(slot) != 0 {
                *ejected &= !bit(slot);
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            ejected = self
                .ejected_cond
                .wait_timeout(ejected, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The devices of `slots` are off the bus: wake whoever waits for them.
    pub fn mark_ejected(&self, slots: u32) {
        if slots == 0 {
            return;
        }
        tracing::info!(
            slots = format_args!("{slots:#x}"),
            "the guest ejected PCI slots"
        );
        let mut ejected = self.ejected.lock().unwrap_or_else(|e| e.into_inner());
        *ejected |= slots;
        self.ejected_cond.notify_all();
    }

    /// Forget every pending addition, request and eject (the machine resets).
    pub fn power_on_reset(&self) {
        self.up.store(0, Ordering::SeqCst);
        self.down.store(0, Ordering::SeqCst);
        self.requested.store(0, Ordering::SeqCst);
    }

    /// A guest read at `offset`.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let value = match offset {
            PCIU => self.up.swap(0, Ordering::SeqCst),
            PCID => self.down.swap(0, Ordering::SeqCst),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write at `offset`: the slots it ejected (B0EJ), for the bus to drop before
    /// [`PciHotplug::mark_ejected`].
    pub fn mmio_write(&self, offset: u64, data: &[u8]) -> u32 {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return 0;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            B0EJ => {
                // only what was asked for (never slot 0, the host bridge)
                let slots = value & self.requested.fetch_and(!value, Ordering::SeqCst);
                if value & !slots != 0 {
                    let refused = value & !slots;
                    tracing::warn!(
                        slots = format_args!("{refused:#x}"),
                        "the guest ejected slots nobody asked for: ignored"
                    );
                }
                slots
            }
            PSEG if value != 0 => {
                tracing::warn!(
                    segment = value,
                    "the guest chose a PCI segment we do not have"
                );
                0
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(h: &PciHotplug, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        h.mmio_read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn additions_and_requests_are_read_once() {
        let h = PciHotplug::default();
        h.announce_added(3);
        h.request_eject(5);
        h.announce_added(0); // the host bridge: no bit
        h.announce_added(40); // no such slot
        assert!(h.pending());
        assert_eq!(read(&h, PCIU), 1 << 3);
        assert_eq!(read(&h, PCID), 1 << 5);
        assert_eq!(read(&h, PCIU), 0);
        assert!(!h.pending());
        let mut two = [0xffu8; 2];
        h.announce_added(4);
        h.mmio_read(PCIU, &mut two);
        assert_eq!(two, [0, 0], "a short read takes nothing");
        assert_eq!(read(&h, PCIU), 1 << 4);
    }

    #[test]
    fn an_eject_wakes_its_waiter_once_and_never_the_host_bridge() {
        let h = std::sync::Arc::new(PciHotplug::default());
        let waiter = {
            let h = h.clone();
            std::thread::spawn(move || h.wait_ejected(6, Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        // not asked for yet: refused
        assert_eq!(h.mmio_write(B0EJ, &(1u32 << 6).to_le_bytes()), 0);
        h.request_eject(6);
        let slots = h.mmio_write(B0EJ, &(1u32 << 6 | 1 << 7 | 1).to_le_bytes());
        assert_eq!(slots, 1 << 6, "slot 7 was not asked for, slot 0 never");
        h.mark_ejected(slots);
        assert!(waiter.join().unwrap());
        assert!(!h.wait_ejected(6, Duration::from_millis(10)), "taken once");
        // a second eject of the same slot needs a second request
        assert_eq!(h.mmio_write(B0EJ, &(1u32 << 6).to_le_bytes()), 0);
        assert_eq!(h.mmio_write(B0EJ, &1u32.to_le_bytes()), 0);
        assert_eq!(h.mmio_write(B0EJ, &[1, 0]), 0, "a short write does nothing");
    }
}
