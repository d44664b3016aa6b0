//! Registers, segments, page tables, MSRs, FPU and LAPIC LINT pins for boot.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt;
use super::CpuError;
use crate::boot::EntryPoint;
use crate::layout::*;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 0x6;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

pub enum RegsError {
    Kvm(&'static str, kvm_ioctls::Error),
    Memory(String),
}

pub fn set_msrs(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        // without this the guest runs with all memory uncached
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Msrs {
        set: 0,
        want: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| CpuError::Kvm {
        what: "the boot MSRs",
        id: 0,
        source,
    })?;
    if set != entries.len() {
        return Err(CpuError::Msrs {
            set,
            want: entries.len(),
        });
    }
    Ok(())
}

pub fn set_fpu(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    vcpu.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })
}

/// LINT0 as ExtINT and LINT1 as NMI, as firmware leaves them.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut lapic = vcpu.get_lapic()?;
    let mut set_mode = |reg: usize, mode: u32| {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    };
    set_mode(APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
}

/// Identity-map the first 4 GiB with 2 MiB pages (PML4 → PDPT → 4 page directories).
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|e| RegsError::Memory(e.to_string()))
    };
    w(PDPTE_START | 0x3, PML4_START)?;
    for dir in 0..4u64 {
        let pd = PDE_START + dir * 0x1000;
        w(pd | 0x3, PDPTE_START + dir * 8)?;
        for i in 0..512u64 {
            w(((dir * 512 + i) << 21) | 0x83, pd + i * 8)?;
        }
    }
    Ok(())
}

pub fn set_boot_state(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: EntryPoint,
) -> Result<(), RegsError> {
    let kvm = |what| move |e| RegsError::Kvm(what, e);
    let mut sregs = vcpu.get_sregs().map_err(kvm("the segment registers"))?;
    let table = match entry {
        EntryPoint::Linux64(_) => [
            gdt::entry(0, 0, 0),
            gdt::entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt::entry(0xc093, 0, 0xfffff), // data
            gdt::entry(0x808b, 0, 0xfffff), // TSS
        ],
        EntryPoint::Pvh(_) => [
            gdt::entry(0, 0, 0),
            gdt::entry(0xc09b, 0, 0xffff_ffff), // 32-bit code
            gdt::entry(0xc093, 0, 0xffff_ffff), // data
            gdt::entry(0x008b, 0, 0x67),        // TSS
        ],
    };
    for (i, e) in table.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(|e| RegsError::Memory(e.to_string()))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| RegsError::Memory(e.to_string()))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = gdt::segment(table[2], 2);
    sregs.cs = gdt::segment(table[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(table[3], 3);

    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        EntryPoint::Linux64(rip) => {
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryPoint::Pvh(rip) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = PVH_INFO_START;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(kvm("the segment registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("the registers"))?;
    Ok(())
}
