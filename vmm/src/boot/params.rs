//! What the kernel reads at entry: the e820 memory map, and either the Linux zero page
//! (`boot_params`, 64-bit boot protocol) or the PVH `hvm_start_info`.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::*;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Where things are that the boot parameters point at.
#[derive(Debug, Clone, Copy)]
pub struct BootLayout {
    pub low_ram_end: u64,
    pub ram_size: u64,
    pub cmdline_len: usize,
    pub initramfs: Option<(u64, u64)>,
    pub rsdp: u64,
}

/// `(address, size, type)` of every e820 entry.
pub fn e820_map(l: &BootLayout) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (ACPI_START, ACPI_END - ACPI_START, E820_RESERVED),
        (HIMEM_START, l.low_ram_end - HIMEM_START, E820_RAM),
    ];
    if l.ram_size > MEM_32BIT_GAP_START {
        map.push((RAM_64BIT_START, l.ram_size - MEM_32BIT_GAP_START, E820_RAM));
    }
    map
}

#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("too many e820 entries")]
    E820Full,
    #[error("cannot write the boot parameters to guest memory: {0:?}")]
    Write(String),
}

/// Fill and write the zero page for the 64-bit Linux boot protocol.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel_header: Option<setup_header>,
    l: &BootLayout,
) -> Result<(), ParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = l.cmdline_len as u32;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some((addr, size)) = l.initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = l.rsdp;
    let map = e820_map(l);
    if map.len() > params.e820_table.len() {
        return Err(ParamsError::E820Full);
    }
    params.e820_entries = map.len() as u8;
    for (i, (addr, size, kind)) in map.into_iter().enumerate() {
        params.e820_table[i].addr = addr;
        params.e820_table[i].size = size;
        params.e820_table[i].r#type = kind;
    }
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| ParamsError::Write(format!("{e:?}")))
}

/// Fill and write `hvm_start_info`, its memory map and module list for the PVH entry.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, l: &BootLayout) -> Result<(), ParamsError> {
    let map: Vec<hvm_memmap_table_entry> = e820_map(l)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: l.rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = l
        .initramfs
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
    params.set_sections::<hvm_memmap_table_entry>(&map, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| ParamsError::Write(format!("{e:?}")))
}
