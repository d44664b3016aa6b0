//! Devices the vmm emulates itself: the legacy platform (serial, i8042, ACPI PM registers).
//! Port I/O from vCPU exits is dispatched here; unknown ports read as all-ones.

pub mod acpi_pm;
pub mod i8042;
pub mod serial;
mod terminal;

use std::sync::Arc;

use crate::exit::ExitHandle;

/// The port-I/O devices of the VM.
pub struct LegacyDevices {
    pub serial: Arc<serial::Console>,
    pub exit: Arc<ExitHandle>,
}

impl LegacyDevices {
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
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
