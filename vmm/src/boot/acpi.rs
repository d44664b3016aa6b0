//! ACPI tables: RSDP → XSDT → FADT (hardware-reduced, with sleep and reset registers) → DSDT
//! (`\_S5`), and the MADT (one local APIC per vCPU, the IOAPIC).
//!
//! Hardware-reduced ACPI keeps the platform small (no PM1 blocks, no legacy PIC/PIT use by the
//! guest) while still giving Linux a clean power-off (a write of SLP_TYP=5|SLP_EN to the sleep
//! control register) and a reset register, both handled by [`crate::devices::acpi_pm`].

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{acpi_cpus, acpi_hotplug};
use crate::devices::acpi_pm::{RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};
use crate::devices::serial::{COM1_BASE, COM1_IRQ};
use crate::layout::{ACPI_END, ACPI_START, APIC_START, IOAPIC_START, PCI_MMIO_END, PCI_MMIO_START};
use crate::pci::bus::CONFIG_ADDRESS_PORT;

const OEM_ID: [u8; 6] = *b"SPLTVR";
/// FADT IA-PC boot architecture flags: no VGA, no CMOS RTC (bit 8042 left clear: no PS/2
/// controller to probe; the reset path through port 0x64 still works without the driver).
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables ({0} bytes) do not fit below 1 MiB")]
    TooLarge(u64),
    #[error("cannot write the ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port as u64,
    )
}

/// COM1 as an ACPI device (PNP0501): its `_CRS` is what makes Linux register GSI 4 for the
/// UART when there is no legacy PIC to pre-allocate ISA IRQs.
fn com1_device() -> Vec<u8> {
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let io = aml::IO::new(COM1_BASE, COM1_BASE, 1, 8);
    let crs = aml::ResourceTemplate::new(vec![&irq, &io]);
    let hid = aml::EISAName::new("PNP0501");
    let hid_name = aml::Name::new("_HID".into(), &hid);
    let uid_name = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    bytes(&aml::Device::new(
        "_SB_.COM1".into(),
        vec![&hid_name, &uid_name, &crs_name],
    ))
}

/// The power button `\_SB_.PWRB`, the Generic Event Device that notifies it (see
/// `devices::ged`), the PCI hotplug controller (`acpi_hotplug`) and, with `cpu_hotplug`, the
/// vCPUs' devices and their controller (`acpi_cpus`, `max` vCPUs).
fn event_devices(cpu_hotplug: Option<u8>) -> Vec<u8> {
    let pwrb_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let pwrb_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let mut out = bytes(&aml::Device::new(
        "_SB_.PWRB".into(),
        vec![&pwrb_hid, &pwrb_uid],
    ));
    out.extend(acpi_hotplug::controller());
    out.extend(acpi_hotplug::ged(cpu_hotplug.is_some()));
    if let Some(max) = cpu_hotplug {
        out.extend(acpi_cpus::controller());
        out.extend(acpi_cpus::cpus(max));
    }
    out
}

/// The PCI host bridge `_SB_.PCI0` (PNP0A08): bus 0, config mechanism #1 ports, the I/O space
/// and the 32-bit MMIO window where the vmm places device BARs; its hotplug slots.
fn pci_host_bridge() -> Vec<u8> {
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_io = aml::IO::new(CONFIG_ADDRESS_PORT, CONFIG_ADDRESS_PORT, 1, 8);
    let io_low = aml::AddressSpace::new_io(0u16, 0x0cf7u16, None);
    let io_high = aml::AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
    let mmio = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (PCI_MMIO_END - 1) as u32,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_io, &io_low, &io_high, &mmio]);
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_ADR".into(), &aml::ZERO),
        aml::Name::new("_SEG".into(), &aml::ZERO),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_BBN".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &crs),
    ];
    let slots = acpi_hotplug::pci0_children_aml();
    let mut children: Vec<&dyn Aml> = names.iter().map(|n| n as &dyn Aml).collect();
    children.push(&slots);
    bytes(&aml::Device::new("_SB_.PCI0".into(), children))
}

fn dsdt(cpu_hotplug: Option<u8>) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"SVDSDT  ", 1);
    // Name (_S5, Package () { 5 }): SLP_TYP 5 for the soft-off state.
    let s5 = aml::Name::new("_S5_".into(), &aml::Package::new(vec![&5u8]));
    dsdt.append_slice(&bytes(&s5));
    dsdt.append_slice(&com1_device());
    dsdt.append_slice(&pci_host_bridge());
    dsdt.append_slice(&event_devices(cpu_hotplug));
    dsdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"SVFADT  ", 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC).into();
    fadt.reset_reg = io_gas(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_gas(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_gas(SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"SPLITVSR").into();
    bytes(&fadt.finalize())
}

/// A local APIC per possible vCPU: the `cpus` present at boot enabled, the others up to `max`
/// "online capable" (they may come later, `acpi_cpus`).
fn madt(cpus: u8, max: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"SVMADT  ",
        1,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..max.max(cpus) {
        let status = match id < cpus {
            true => EnabledStatus::Enabled,
            false => EnabledStatus::DisabledOnlineCapable,
        };
        madt.add_structure(ProcessorLocalApic::new(id, id, status));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
    bytes(&madt)
}

/// Write the tables at [`ACPI_START`] for `cpus` vCPUs present of `max`; returns the RSDP's
/// guest address.
pub fn write_tables(mem: &GuestMemoryMmap, cpus: u8, max: u8) -> Result<u64, AcpiError> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let dsdt = dsdt((max > cpus).then_some(max));
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus, max);
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, *b"SVXSDT  ", 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes(&xsdt);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge(end - ACPI_START));
    }
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    for (addr, data) in [
        (rsdp_addr, &rsdp),
        (dsdt_addr, &dsdt),
        (fadt_addr, &fadt),
        (madt_addr, &madt),
        (xsdt_addr, &xsdt),
    ] {
        mem.write_slice(data, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        for t in [
            dsdt(None),
            dsdt(Some(8)),
            fadt(0x1234),
            madt(4, 4),
            madt(2, 8),
        ] {
            assert!(checksum_ok(&t), "bad checksum in {:?}", &t[..4]);
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len()
            );
        }
        // 4 local APICs (8 bytes each) + 1 IOAPIC (12) after the 44-byte header
        assert_eq!(madt(4, 4).len(), 44 + 4 * 8 + 12);
        // 8 possible, 2 present: the 6 others online capable (flags 2)
        let m = madt(2, 8);
        assert_eq!(m.len(), 44 + 8 * 8 + 12);
        let flags =
            |i: usize| u32::from_le_bytes(m[44 + i * 8 + 4..44 + i * 8 + 8].try_into().unwrap());
        assert_eq!((flags(1), flags(2), flags(7)), (1, 2, 2));
        // the DSDT carries \_S5 with SLP_TYP 5, and COM1
        assert!(
            !dsdt(None).windows(4).any(|w| w == b"CPUS"),
            "no vCPU hotplug, no CPUS"
        );
        assert!(dsdt(Some(8)).windows(4).any(|w| w == b"CPUS"));
        let d = dsdt(None);
        assert!(d.windows(4).any(|w| w == b"_S5_"));
        assert!(d.windows(4).any(|w| w == b"COM1"));
        assert!(d.windows(4).any(|w| w == b"PCI0"));
    }

    #[test]
    fn the_power_button_sits_behind_a_generic_event_device() {
        assert!(
            !dsdt(None).windows(4).any(|w| w == b"CPUS"),
            "no vCPU hotplug, no CPUS"
        );
        assert!(dsdt(Some(8)).windows(4).any(|w| w == b"CPUS"));
        let d = dsdt(None);
        assert!(d.windows(4).any(|w| w == b"PWRB"));
        assert!(d.windows(4).any(|w| w == b"GED_"));
        assert!(d.windows(8).any(|w| w == b"ACPI0013"));
        assert!(d.windows(4).any(|w| w == b"_EVT"));
        assert!(d.windows(4).any(|w| w == b"PHPR"));
        assert!(d.windows(4).any(|w| w == b"S031"));
    }
}
