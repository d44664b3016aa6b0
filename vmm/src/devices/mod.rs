//! Devices the vmm emulates itself: the legacy platform (serial, i8042, ACPI PM registers) and
//! the PCI bus. Port and MMIO exits of the vCPUs are dispatched here; unknown ports and
//! addresses read as all-ones and ignore writes.

pub mod acpi_pm;
pub mod i8042;
pub mod persist;
pub mod power_button;
pub mod serial;
mod terminal;

use std::sync::Arc;

use crate::exit::ExitHandle;
use crate::pci::bus::PciBus;

/// Every device the vCPUs can reach through exits.
pub struct Devices {
    pub serial: Arc<serial::Console>,
    pub pci: PciBus,
    pub exit: Arc<ExitHandle>,
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
        if !self.pci.mmio_read(addr, data) {
            tracing::trace!(addr, "read from unmapped MMIO");
            data.fill(0xff);
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
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
