//! What a snapshot keeps of the devices the vmm emulates itself: today the 8250 console's UART
//! (the i8042 and the ACPI PM registers keep nothing between accesses).
//!
//! [`super::serial::Console::state`] captures it from the live UART,
//! [`super::serial::Console::restore`] puts it back (vm-superio's `Serial::from_state`),
//! checking `version` against [`SerialState::VERSION`] first. Where the console's output goes
//! is configuration, not state.

use serde::{Deserialize, Serialize};

/// The 16550A UART's registers and receive FIFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// [`SerialState::VERSION`] when captured.
    pub version: u32,
    /// Divisor latch, low and high byte.
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read yet.
    pub receive_fifo: Vec<u8>,
}

impl SerialState {
    pub const VERSION: u32 = 1;
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(uart: vm_superio::serial::SerialState) -> SerialState {
        SerialState {
            version: SerialState::VERSION,
            baud_divisor_low: uart.baud_divisor_low,
            baud_divisor_high: uart.baud_divisor_high,
            interrupt_enable: uart.interrupt_enable,
            interrupt_identification: uart.interrupt_identification,
            line_control: uart.line_control,
            line_status: uart.line_status,
            modem_control: uart.modem_control,
            modem_status: uart.modem_status,
            scratch: uart.scratch,
            receive_fifo: uart.in_buffer,
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::config::SerialConfig;
    use crate::devices::serial::Console;

    const DATA: u8 = 0;
    const IER: u8 = 1;
    const LCR: u8 = 3;
    const MCR: u8 = 4;
    const SCRATCH: u8 = 7;
    const LCR_DLAB: u8 = 0x80;
    const MCR_LOOP: u8 = 0x10;

    #[test]
    fn state_is_what_the_guest_programmed() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let console = Console::new(&SerialConfig::Off, irq).unwrap();
        console.write(LCR, LCR_DLAB);
        console.write(DATA, 0x01); // 115200 baud
        console.write(IER, 0x00);
        console.write(LCR, 0x03); // 8N1
        console.write(IER, 0x01); // received data available
        console.write(SCRATCH, 0x5a);
        // in loopback mode the transmitted bytes land in the receive FIFO
        console.write(MCR, MCR_LOOP);
        console.write(DATA, b'h');
        console.write(DATA, b'i');

        let s = console.state();
        assert_eq!(s.version, SerialState::VERSION);
        assert_eq!((s.baud_divisor_low, s.baud_divisor_high), (0x01, 0x00));
        assert_eq!(s.line_control, 0x03);
        assert_eq!(s.interrupt_enable, 0x01);
        assert_eq!(s.scratch, 0x5a);
        assert_eq!(s.modem_control, MCR_LOOP);
        assert_eq!(s.receive_fifo, b"hi");
        assert_eq!(s.line_status & 0x01, 0x01, "data ready");

        console.read(DATA);
        assert_eq!(console.state().receive_fifo, b"i");
    }
}
