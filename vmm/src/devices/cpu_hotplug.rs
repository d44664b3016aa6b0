//! The CPU hotplug controller's registers (`\_SB_.PRES`, at [`CPU_HOTPLUG_START`]; the AML is
//! in `boot/acpi_hotplug.rs`), Cloud Hypervisor's scheme: the guest selects a vCPU by id and
//! reads or acknowledges its state.
//!
//! ```text
//! 0x0  CSEL  RW  the selected vCPU (its APIC id = ACPI _UID)
//! 0x4  status of the selected vCPU
//!      R  bit 0 CPEN (present), bit 1 CINS (being added), bit 2 CRMV (to be removed)
//!      W  bit 1: CINS seen; bit 2: CRMV seen; bit 3 CEJ0: eject it (`_EJ0`)
//! 0x8  reserved, reads 0
//! ```
//!
//! Only 4-byte accesses do anything (the AML's fields are DWordAcc). A vCPU is ejected only
//! when `vm.resize` asked for it: a guest cannot take away a vCPU nobody asked it to give up.
//! The eject only marks it; the remover (the API's thread, waiting in [`CpuHotplugRegs::wait_ejected`])
//! stops its thread.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use crate::layout::CPU_HOTPLUG_START;

/// The registers' size in bytes.
pub const CPU_HOTPLUG_SIZE: u64 = 0xc;

const STATUS_ENABLED: u32 = 1 << 0;
const STATUS_INSERTING: u32 = 1 << 1;
const STATUS_REMOVING: u32 = 1 << 2;
const STATUS_EJECT: u32 = 1 << 3;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuState {
    enabled: bool,
    inserting: bool,
    removing: bool,
    /// `vm.resize` asked for its removal: the guest may eject it.
    eject_allowed: bool,
}

#[derive(Debug)]
struct Regs {
    selected: u32,
    cpus: Vec<CpuState>,
}

pub struct CpuHotplugRegs {
    boot: u8,
    regs: Mutex<Regs>,
    ejected: Condvar,
}

impl CpuHotplugRegs {
    /// `boot` vCPUs present of `max`.
    pub fn new(boot: u8, max: u8) -> CpuHotplugRegs {
        let cpus = (0..max)
            .map(|id| CpuState {
                enabled: id < boot,
                ..CpuState::default()
            })
            .collect();
        CpuHotplugRegs {
            boot,
            regs: Mutex::new(Regs { selected: 0, cpus }),
            ejected: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Regs> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The vCPUs present now, by id.
    pub fn present(&self) -> Vec<bool> {
        self.lock().cpus.iter().map(|c| c.enabled).collect()
    }

    /// vCPU `id` was added: present, and the guest is told (with the GED's CPU event).
    pub fn announce_added(&self, id: u8) {
        if let Some(c) = self.lock().cpus.get_mut(usize::from(id)) {
            *c = CpuState {
                enabled: true,
                inserting: true,
                ..CpuState::default()
            };
        }
    }

    /// Ask the guest to give vCPU `id` up (then the GED's CPU event).
    pub fn request_removal(&self, id: u8) {
        if let Some(c) = self.lock().cpus.get_mut(usize::from(id)) {
            c.removing = true;
            c.eject_allowed = true;
        }
    }

    /// Wait up to `limit` for the guest's eject of vCPU `id`; whether it came.
    pub fn wait_ejected(&self, id: u8, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut regs = self.lock();
        loop {
            match regs.cpus.get(usize::from(id)) {
                Some(c) if c.enabled => {}
                _ => return true,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            regs = self
                .ejected
                .wait_timeout(regs, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The machine resets: the boot vCPUs are the ones present, nothing pending.
    pub fn power_on_reset(&self) {
        let boot = self.boot;
        let mut regs = self.lock();
        regs.selected = 0;
        for (id, c) in regs.cpus.iter_mut().enumerate() {
            *c = CpuState {
                enabled: id < usize::from(boot),
                ..CpuState::default()
            };
        }
    }

    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let regs = self.lock();
        let value = match offset {
            0 => regs.selected,
            4 => regs.cpus.get(regs.selected as usize).map_or(0, |c| {
                let bit = |on: bool, b: u32| if on { b } else { 0 };
                bit(c.enabled, STATUS_ENABLED)
                    | bit(c.inserting, STATUS_INSERTING)
                    | bit(c.removing, STATUS_REMOVING)
            }),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write; the vCPU it ejected, if it did.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) -> Option<u8> {
        let value = u32::from_le_bytes(data.try_into().ok()?);
        let mut regs = self.lock();
        match offset {
            0 => {
                regs.selected = value;
                None
            }
            4 => {
                let id = regs.selected;
                let c = regs.cpus.get_mut(id as usize)?;
                if value & STATUS_INSERTING != 0 {
                    c.inserting = false;
                }
                if value & STATUS_REMOVING != 0 {
                    c.removing = false;
                }
                if value & STATUS_EJECT == 0 {
                    return None;
                }
                if !c.eject_allowed {
                    tracing::warn!(
                        vcpu = id,
                        "the guest ejected a vCPU nobody asked it to: ignored"
                    );
                    return None;
                }
                *c = CpuState::default();
                drop(regs);
                tracing::info!(vcpu = id, "the guest ejected the vCPU");
                self.ejected.notify_all();
                u8::try_from(id).ok()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(r: &CpuHotplugRegs, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        r.mmio_read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    fn write(r: &CpuHotplugRegs, offset: u64, v: u32) -> Option<u8> {
        r.mmio_write(offset, &v.to_le_bytes())
    }

    #[test]
    fn an_added_vcpu_is_present_and_inserting_until_seen() {
        let r = CpuHotplugRegs::new(1, 4);
        write(&r, 0, 0);
        assert_eq!(read(&r, 4), STATUS_ENABLED, "the boot vCPU");
        write(&r, 0, 2);
        assert_eq!(read(&r, 4), 0, "absent");
        r.announce_added(2);
        assert_eq!(read(&r, 4), STATUS_ENABLED | STATUS_INSERTING);
        write(&r, 4, STATUS_INSERTING);
        assert_eq!(read(&r, 4), STATUS_ENABLED);
        assert_eq!(r.present(), [true, false, true, false]);
        write(&r, 0, 99);
        assert_eq!(read(&r, 4), 0, "out of range reads 0");
    }

    #[test]
    fn only_a_requested_vcpu_can_be_ejected_and_the_waiter_sees_it() {
        let r = std::sync::Arc::new(CpuHotplugRegs::new(1, 4));
        r.announce_added(1);
        write(&r, 0, 1);
        write(&r, 4, STATUS_INSERTING);
        assert_eq!(write(&r, 4, STATUS_EJECT), None, "not asked for");
        assert_eq!(r.present(), [true, true, false, false]);
        assert!(!r.wait_ejected(1, Duration::from_millis(10)));
        r.request_removal(1);
        assert_eq!(read(&r, 4), STATUS_ENABLED | STATUS_REMOVING);
        let waiter = {
            let r = r.clone();
            std::thread::spawn(move || r.wait_ejected(1, Duration::from_secs(10)))
        };
        write(&r, 4, STATUS_REMOVING);
        assert_eq!(write(&r, 4, STATUS_EJECT), Some(1));
        assert!(waiter.join().expect("waiter"));
        assert_eq!(read(&r, 4), 0);
        assert_eq!(r.present(), [true, false, false, false]);
    }

    #[test]
    fn a_reset_brings_back_the_boot_vcpus_only() {
        let r = CpuHotplugRegs::new(2, 4);
        r.announce_added(3);
        r.power_on_reset();
        assert_eq!(r.present(), [true, true, false, false]);
        let mut two = [0xffu8; 2];
        r.mmio_read(4, &mut two);
        assert_eq!(two, [0, 0], "2-byte accesses do nothing");
    }
}
