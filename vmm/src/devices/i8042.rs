//! Just enough of the i8042 keyboard controller for the guest to reset the machine: the
//! "pulse reset line" command (0xfe written to the command port). No keyboard is attached.

use crate::exit::VmExit;

pub const DATA_PORT: u16 = 0x60;
pub const COMMAND_PORT: u16 = 0x64;
const CMD_RESET_CPU: u8 = 0xfe;

/// Status register: empty buffers; data port: nothing to read.
pub fn read(_port: u16) -> u8 {
    0
}

pub fn write(port: u16, value: u8) -> Option<VmExit> {
    (port == COMMAND_PORT && value == CMD_RESET_CPU).then_some(VmExit::Reset)
}
