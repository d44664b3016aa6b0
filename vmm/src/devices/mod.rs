//! Devices the vmm emulates itself: the legacy platform (serial, i8042, ACPI PM registers),
//! the platform registers page (the GED's events, the PCI and CPU hotplug controllers) and the PCI
//! bus. Port and MMIO exits of the vCPUs are dispatched here; unknown ports and addresses
//! read as all-ones and ignore writes.

pub mod acpi_pm;
pub mod cpu_hotplug;
pub mod ged;
pub mod i8042;
pub mod pci_hotplug;
pub mod persist;
pub mod serial;
mod terminal;

use std::sync::Arc;

use crate::exit::ExitHandle;
use crate::layout::{CPU_HOTPLUG_START, GED_STATUS_START, PCI_HOTPLUG_START};
use crate::pci::bus::PciBus;
use cpu_hotplug::{CpuHotplugRegs, CPU_HOTPLUG_SIZE};
use ged::{Ged, GED_STATUS_SIZE};
use pci_hotplug::{PciHotplug, PCI_HOTPLUG_SIZE};

/// Every device the vCPUs can reach through exits.
pub struct Devices {
    pub serial: Arc<serial::Console>,
    pub pci: PciBus,
    pub exit: Arc<ExitHandle>,
    pub ged: Arc<Ged>,
    pub hotplug: Arc<PciHotplug>,
    pub cpu_hotplug: Arc<CpuHotplugRegs>,
}

/// Where `addr` falls in the platform registers page, if there.
enum Platform {
    Hotplug(u64),
    Ged(u64),
    Cpu(u64),
}

fn platform(addr: u64) -> Option<Platform> {
    let inside = |start: u64, size: u64| addr.checked_sub(start).filter(|o| *o < size);
    if let Some(offset) = inside(PCI_HOTPLUG_START, PCI_HOTPLUG_SIZE) {
        return Some(Platform::Hotplug(offset));
    }
    if let Some(offset) = inside(CPU_HOTPLUG_START, CPU_HOTPLUG_SIZE) {
        return Some(Platform::Cpu(offset));
    }
    inside(GED_STATUS_START, GED_STATUS_SIZE).map(Platform::Ged)
}

impl Devices {
    /// Serve a port or MMIO exit; other exits are not ours (`false`).
    pub fn io_exit(&self, exit: kvm_ioctls::VcpuExit<'_>) -> bool {
        use kvm_ioctls::VcpuExit;
        match exit {
            VcpuExit::IoIn(port, data) => self.pio_read(port, data),
            VcpuExit::IoOut(port, data) => self.pio_write(port, data),
            VcpuExit::MmioRead(addr, data) => self.mmio_read(addr, data),
            VcpuExit::MmioWrite(addr, data) => self.mmio_write(addr, data),
            _ => return false,
        }
        true
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match platform(addr) {
            Some(Platform::Hotplug(offset)) => return self.hotplug.mmio_read(offset, data),
            Some(Platform::Ged(offset)) => return self.ged.mmio_read(offset, data),
            Some(Platform::Cpu(offset)) => return self.cpu_hotplug.mmio_read(offset, data),
            None => {}
        }
        if !self.pci.mmio_read(addr, data) {
            tracing::trace!(addr, "read from unmapped MMIO");
            data.fill(0xff);
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        match platform(addr) {
            Some(Platform::Hotplug(offset)) => {
                // ejected: off the bus now; the remover tears the device down
                let slots = self.hotplug.mmio_write(offset, data);
                for slot in (1..crate::pci::bus::MAX_SLOTS).filter(|s| slots & (1 << s) != 0) {
                    self.pci.remove(slot);
                }
                return self.hotplug.mark_ejected(slots);
            }
            Some(Platform::Ged(_)) => return,
            // an eject only marks the vCPU: the remover stops its thread
            Some(Platform::Cpu(offset)) => {
                self.cpu_hotplug.mmio_write(offset, data);
                return;
            }
            None => {}
        }
        if !self.pci.mmio_write(addr, data) {
            tracing::trace!(addr, "write to unmapped MMIO");
        }
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        if self.pci.pio_read(port, data) {
            return;
        }
        match port {
            serial::COM1_BASE..=serial::COM1_END => {
                data.fill(0);
                data[0] = self.serial.read((port - serial::COM1_BASE) as u8);
            }
            i8042::DATA_PORT | i8042::COMMAND_PORT => data.fill(i8042::read(port)),
            acpi_pm::SLEEP_STATUS_PORT => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        if self.pci.pio_write(port, data) {
            return;
        }
        let Some(&value) = data.first() else { return };
        match port {
            serial::COM1_BASE..=serial::COM1_END => {
                self.serial.write((port - serial::COM1_BASE) as u8, value)
            }
            i8042::DATA_PORT | i8042::COMMAND_PORT => {
                if let Some(exit) = i8042::write(port, value) {
                    self.exit.request(exit);
                }
            }
            acpi_pm::SLEEP_CONTROL_PORT | acpi_pm::RESET_PORT => {
                if let Some(exit) = acpi_pm::write(port, value) {
                    self.exit.request(exit);
                }
            }
            _ => tracing::trace!(port, value, "write to an unhandled port"),
        }
    }
}
