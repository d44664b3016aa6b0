//! The guest-physical memory map (x86-64).
//!
//! ```text
//! 0x0000_0500  GDT (boot)               0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT (boot, empty)        0x0000_8ff0  boot stack top
//! 0x0000_6000  PVH hvm_start_info       0x0000_9000  page tables (PML4, PDPT, 4 x PD)
//! 0x0000_6040  PVH module list          0x0002_0000  kernel command line
//! 0x0000_6100  PVH memory map           0x0009_fc00  end of low RAM (EBDA above)
//! 0x000e_0000  ACPI tables (RSDP first)  0x0010_0000  kernel (1 MiB)
//! RAM up to 3 GiB, then the 32-bit hole (PCI MMIO, IOAPIC 0xfec0_0000, the vmm's platform
//! registers 0xfed0_0000, LAPIC 0xfee0_0000),
//! then the rest of RAM from 4 GiB.
//! ```

pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6100;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x2_0000;
/// x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const EBDA_START: u64 = 0x9_fc00;
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = 0x10_0000;
pub const HIMEM_START: u64 = 0x10_0000;

/// Start and size of the 32-bit hole below 4 GiB (device MMIO, IOAPIC, LAPIC).
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
pub const MEM_32BIT_GAP_SIZE: u64 = 1 << 30;
pub const RAM_64BIT_START: u64 = MEM_32BIT_GAP_START + MEM_32BIT_GAP_SIZE;
/// Where the vmm places PCI BARs: the 32-bit hole below the IOAPIC.
pub const PCI_MMIO_START: u64 = MEM_32BIT_GAP_START;
pub const PCI_MMIO_END: u64 = 0xfec0_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// One page of the vmm's platform registers, outside the PCI window: the PCI hotplug
/// controller (`\_SB_.PHPR`, 16 bytes) and the GED's event register (4 bytes).
pub const PLATFORM_MMIO_START: u64 = 0xfed0_0000;
pub const PLATFORM_MMIO_SIZE: u64 = 0x1000;
pub const PCI_HOTPLUG_START: u64 = PLATFORM_MMIO_START;
pub const GED_STATUS_START: u64 = PLATFORM_MMIO_START + 0x10;
/// The CPU hotplug controller's registers (`devices::cpu_hotplug`).
pub const CPU_HOTPLUG_START: u64 = PLATFORM_MMIO_START + 0x20;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map, inside the hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Where the BAR of the virtio-pci device in PCI slot `slot` (1..=31) is at power-on: one
/// [`crate::virtio::pci::BAR_SIZE`] window per slot, so slots never overlap (a device added
/// later gets its own even if the guest moved others).
pub fn bar_for_slot(slot: usize) -> u64 {
    PCI_MMIO_START + (slot.saturating_sub(1) as u64) * crate::virtio::pci::BAR_SIZE
}

/// The guest RAM ranges for `size` bytes of RAM: `(guest address, length)`.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MEM_32BIT_GAP_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MEM_32BIT_GAP_START),
            (RAM_64BIT_START, size - MEM_32BIT_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_split_around_the_32bit_hole() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
    }
}
