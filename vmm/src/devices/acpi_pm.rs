//! The hardware-reduced ACPI power-management registers the FADT points at: the sleep control
//! register (the guest writes SLP_TYP=5 | SLP_EN to power off), its status register, and the
//! reset register.

use crate::exit::VmExit;

pub const SLEEP_CONTROL_PORT: u16 = 0x3c0;
pub const SLEEP_STATUS_PORT: u16 = 0x3c1;
pub const RESET_PORT: u16 = 0x3c2;
pub const RESET_VALUE: u8 = 0x1;
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
/// The `\_S5` SLP_TYP our DSDT declares.
pub const S5_SLP_TYP: u8 = 5;

pub fn write(port: u16, value: u8) -> Option<VmExit> {
    match port {
        SLEEP_CONTROL_PORT if value & SLP_EN != 0 => {
            let slp_typ = (value >> SLP_TYP_SHIFT) & 0x7;
            if slp_typ == S5_SLP_TYP {
                Some(VmExit::PowerOff)
            } else {
                tracing::warn!(slp_typ, "guest asked for an unsupported sleep state");
                None
            }
        }
        RESET_PORT if value == RESET_VALUE => Some(VmExit::Reset),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_resets() {
        assert_eq!(
            write(SLEEP_CONTROL_PORT, (5 << 2) | SLP_EN),
            Some(VmExit::PowerOff)
        );
        assert_eq!(write(SLEEP_CONTROL_PORT, 5 << 2), None);
        assert_eq!(write(SLEEP_CONTROL_PORT, (3 << 2) | SLP_EN), None);
        assert_eq!(write(RESET_PORT, RESET_VALUE), Some(VmExit::Reset));
    }
}
