//! The one piece of "firmware" splitvisor provides: code at the x86 reset vector
//! (0xf000:0xfff0 = 0xffff0).
//!
//! There is no BIOS, but Linux may still jump there to reboot: with hardware-reduced ACPI it
//! tries EFI first, and without EFI falls back to a real-mode jump to the reset vector
//! (`machine_real_restart`). A real machine would run its firmware again; ours writes the ACPI
//! reset register, which the vmm turns into a reset exit.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::devices::acpi_pm::{RESET_PORT, RESET_VALUE};

const RESET_VECTOR: u64 = 0xf_fff0;

/// Write the reset-vector stub (16-bit real-mode code).
pub fn write(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    let port = RESET_PORT.to_le_bytes();
    let code = [
        0xb0,
        RESET_VALUE, // mov al, RESET_VALUE
        0xba,
        port[0],
        port[1], // mov dx, RESET_PORT
        0xee,    // out dx, al
        0xf4,    // hlt
        0xeb,
        0xfd, // jmp back to the hlt
    ];
    mem.write_slice(&code, GuestAddress(RESET_VECTOR))
}
