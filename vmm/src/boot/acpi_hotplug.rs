//! The AML of ACPI PCI hotplug ([`crate::devices::pci_hotplug`] has the registers and the
//! protocol): the controller `\_SB_.PHPR`, a device per slot under `\_SB_.PCI0` with `_ADR`,
//! `_SUN` and `_EJ0` (what makes Linux's acpiphp take the slot), `PCNT` that notifies the
//! slots the controller names, and the GED's `_EVT` that reads which events fired.
//!
//! In ASL:
//!
//! ```text
//! Device (\_SB.PHPR) {
//!     Name (_HID, EisaId ("PNP0A06")) Name (_UID, "PCI Hotplug Controller") Name (_STA, 0x0B)
//!     Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, 0xFED00000, 0x10) })
//!     Mutex (BLCK, 0)
//!     OperationRegion (PCST, SystemMemory, 0xFED00000, 0x10)
//!     Field (PCST, DWordAcc, NoLock, WriteAsZeros) { PCIU, 32, PCID, 32, B0EJ, 32, PSEG, 32 }
//!     Method (PCEJ, 2, Serialized) {
//!         Acquire (BLCK, 0xFFFF) PSEG = Arg1  B0EJ = 1 << Arg0  Release (BLCK) Return (0)
//!     }
//!     Method (PSCN, 0, Serialized) { \_SB.PCI0.PCNT () }
//! }
//! Scope (\_SB.PCI0) {            // slots 1..31 (slot 0, the host bridge, is not ejectable)
//!     Device (S001) { Name (_ADR, 0x10000) Name (_SUN, 1)
//!                     Method (_EJ0, 1) { \_SB.PHPR.PCEJ (_SUN, _SEG) } }
//!     Method (DVNT, 2) { If ((Arg0 & 2) == 2) { Notify (S001, Arg1) } … }
//!     Method (PCNT, 0, Serialized) {
//!         Acquire (\_SB.PHPR.BLCK, 0xFFFF)
//!         DVNT (\_SB.PHPR.PCIU, 1)   // device check: scan the slot
//!         DVNT (\_SB.PHPR.PCID, 3)   // eject request
//!         Release (\_SB.PHPR.BLCK)
//!     }
//! }
//! Device (\_SB.GED_) { …
//!     OperationRegion (GDST, SystemMemory, 0xFED00010, 4) Field (GDST, DWordAcc, …) { GDAT, 32 }
//!     Method (_EVT, 1, Serialized) {
//!         Local0 = GDAT
//!         If ((Local0 & 4) == 4) { \_SB.PHPR.PSCN () }
//!         If ((Local0 & 8) == 8) { Notify (\_SB.PWRB, 0x80) }
//!     }
//! }
//! ```

use acpi_tables::{aml, Aml, AmlSink};

use crate::devices::ged::{EVENT_CPU, EVENT_PCI, EVENT_POWER_BUTTON, GED_IRQ, GED_STATUS_SIZE};
use crate::devices::pci_hotplug::PCI_HOTPLUG_SIZE;
use crate::layout::{GED_STATUS_START, PCI_HOTPLUG_START};
use crate::pci::bus::MAX_SLOTS;

/// AML already encoded, as a child of a device built here.
pub(super) struct Raw(pub Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

pub(super) fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn dword_fields(names: &[&[u8; 4]]) -> Vec<aml::FieldEntry> {
    names
        .iter()
        .map(|n| aml::FieldEntry::Named(**n, 32))
        .collect()
}

/// `\_SB_.PHPR`, the hotplug controller.
pub fn controller() -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A06"));
    let uid = aml::Name::new("_UID".into(), &"PCI Hotplug Controller");
    let sta = aml::Name::new("_STA".into(), &0x0bu8);
    let mem = aml::Memory32Fixed::new(true, PCI_HOTPLUG_START as u32, PCI_HOTPLUG_SIZE as u32);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&mem]));
    let mutex = aml::Mutex::new("BLCK".into(), 0);
    let (base, len) = (PCI_HOTPLUG_START as u32, PCI_HOTPLUG_SIZE as u32);
    let region = aml::OpRegion::new("PCST".into(), aml::OpRegionSpace::SystemMemory, &base, &len);
    let field = aml::Field::new(
        "PCST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        dword_fields(&[b"PCIU", b"PCID", b"B0EJ", b"PSEG"]),
    );
    let acquire = aml::Acquire::new("BLCK".into(), 0xffff);
    let pseg = aml::Path::new("PSEG");
    let store_seg = aml::Store::new(&pseg, &aml::Arg(1));
    let b0ej = aml::Path::new("B0EJ");
    let eject = aml::ShiftLeft::new(&b0ej, &aml::ONE, &aml::Arg(0));
    let release = aml::Release::new("BLCK".into());
    let ret = aml::Return::new(&aml::ZERO);
    let pcej = aml::Method::new(
        "PCEJ".into(),
        2,
        true,
        vec![&acquire, &store_seg, &eject, &release, &ret],
    );
    let scan = aml::MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let pscn = aml::Method::new("PSCN".into(), 0, true, vec![&scan]);
    bytes(&aml::Device::new(
        "_SB_.PHPR".into(),
        vec![
            &hid, &uid, &sta, &crs, &mutex, &region, &field, &pcej, &pscn,
        ],
    ))
}

fn slot_name(slot: usize) -> String {
    format!("S{slot:03}")
}

/// What goes inside `\_SB_.PCI0`: a device per hotplug slot, `DVNT` and `PCNT`.
pub fn pci0_children() -> Vec<u8> {
    let mut out = Vec::new();
    let seg = aml::Path::new("_SEG");
    let sun = aml::Path::new("_SUN");
    for slot in 1..MAX_SLOTS {
        let adr = aml::Name::new("_ADR".into(), &((slot as u32) << 16));
        let sun_name = aml::Name::new("_SUN".into(), &(slot as u32));
        let call = aml::MethodCall::new("\\_SB_.PHPR.PCEJ".into(), vec![&sun, &seg]);
        let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&call]);
        out.extend(bytes(&aml::Device::new(
            slot_name(slot).as_str().into(),
            vec![&adr, &sun_name, &ej0],
        )));
    }
    // DVNT (slots, event): notify each slot whose bit is set
    let masks: Vec<u32> = (1..MAX_SLOTS).map(|s| 1u32 << s).collect();
    let paths: Vec<aml::Path> = (1..MAX_SLOTS)
        .map(|s| aml::Path::new(&slot_name(s)))
        .collect();
    let ands: Vec<aml::And> = masks
        .iter()
        .map(|m| aml::And::new(&aml::ZERO, &aml::Arg(0), m))
        .collect();
    let equals: Vec<aml::Equal> = ands
        .iter()
        .zip(&masks)
        .map(|(a, m)| aml::Equal::new(a, m))
        .collect();
    let notifies: Vec<aml::Notify> = paths
        .iter()
        .map(|p| aml::Notify::new(p, &aml::Arg(1)))
        .collect();
    let ifs: Vec<aml::If> = equals
        .iter()
        .zip(&notifies)
        .map(|(e, n)| aml::If::new(e, vec![n]))
        .collect();
    let dvnt = aml::Method::new(
        "DVNT".into(),
        2,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    );
    out.extend(bytes(&dvnt));
    let acquire = aml::Acquire::new("\\_SB_.PHPR.BLCK".into(), 0xffff);
    let pciu = aml::Path::new("\\_SB_.PHPR.PCIU");
    let pcid = aml::Path::new("\\_SB_.PHPR.PCID");
    let check = aml::MethodCall::new("DVNT".into(), vec![&pciu, &aml::ONE]);
    let eject = aml::MethodCall::new("DVNT".into(), vec![&pcid, &3u8]);
    let release = aml::Release::new("\\_SB_.PHPR.BLCK".into());
    let pcnt = aml::Method::new(
        "PCNT".into(),
        0,
        true,
        vec![&acquire, &check, &eject, &release],
    );
    out.extend(bytes(&pcnt));
    out
}

/// `\_SB_.GED_`: its interrupt, its event register and `_EVT` (which scans the vCPUs when
/// `cpu_hotplug`: the VM has `\_SB_.CPUS`).
pub fn ged(cpu_hotplug: bool) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&irq]));
    let (base, len) = (GED_STATUS_START as u32, GED_STATUS_SIZE as u32);
    let region = aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemMemory, &base, &len);
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        dword_fields(&[b"GDAT"]),
    );
    let local = aml::Local(0);
    let gdat = aml::Path::new("GDAT");
    let read = aml::Store::new(&local, &gdat);
    let (pci, button) = (EVENT_PCI, EVENT_POWER_BUTTON);
    let pci_bit = aml::And::new(&aml::ZERO, &local, &pci);
    let pci_set = aml::Equal::new(&pci_bit, &pci);
    let scan = aml::MethodCall::new("\\_SB_.PHPR.PSCN".into(), vec![]);
    let on_pci = aml::If::new(&pci_set, vec![&scan]);
    let button_bit = aml::And::new(&aml::ZERO, &local, &button);
    let button_set = aml::Equal::new(&button_bit, &button);
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&pwrb, &0x80u8);
    let on_button = aml::If::new(&button_set, vec![&notify]);
    let cpu = EVENT_CPU;
    let cpu_bit = aml::And::new(&aml::ZERO, &local, &cpu);
    let cpu_set = aml::Equal::new(&cpu_bit, &cpu);
    let cscn = aml::MethodCall::new("\\_SB_.CPUS.CSCN".into(), vec![]);
    let on_cpu = aml::If::new(&cpu_set, vec![&cscn]);
    let mut body: Vec<&dyn Aml> = vec![&read, &on_pci, &on_button];
    if cpu_hotplug {
        body.push(&on_cpu);
    }
    let evt = aml::Method::new("_EVT".into(), 1, true, body);
    bytes(&aml::Device::new(
        "_SB_.GED_".into(),
        vec![&hid, &uid, &crs, &region, &field, &evt],
    ))
}

/// [`pci0_children`] as one child of the host bridge's device.
pub fn pci0_children_aml() -> impl Aml {
    Raw(pci0_children())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(d: &[u8], s: &[u8]) -> bool {
        d.windows(s.len()).any(|w| w == s)
    }

    #[test]
    fn every_slot_but_the_host_bridge_is_ejectable() {
        let c = pci0_children();
        assert!(has(&c, b"S001") && has(&c, b"S031"));
        assert!(!has(&c, b"S000"), "the host bridge must not be ejectable");
        assert!(has(&c, b"_EJ0") && has(&c, b"_SUN") && has(&c, b"DVNT") && has(&c, b"PCNT"));
        let p = controller();
        for name in [
            &b"PHPR"[..],
            b"PCIU",
            b"PCID",
            b"B0EJ",
            b"PSEG",
            b"PCEJ",
            b"BLCK",
        ] {
            assert!(has(&p, name), "{}", String::from_utf8_lossy(name));
        }
        // the controller's registers: Memory32Fixed at PCI_HOTPLUG_START, 16 bytes
        let mut fixed = vec![0x86, 9, 0, 1];
        fixed.extend((PCI_HOTPLUG_START as u32).to_le_bytes());
        fixed.extend((PCI_HOTPLUG_SIZE as u32).to_le_bytes());
        assert!(has(&p, &fixed));
    }

    #[test]
    fn the_ged_reads_its_events_before_acting() {
        let g = ged(false);
        assert!(has(&g, b"GDAT") && has(&g, b"GDST") && has(&g, b"_EVT") && has(&g, b"PWRB"));
        assert!(has(&g, b"PSCN"));
        assert!(!has(&g, b"CSCN"), "no vCPU hotplug: no CPU scan");
        assert!(has(&ged(true), b"CSCN"));
        // Extended IRQ descriptor: consumer, edge, active-high, exclusive; one interrupt, GED_IRQ
        let irq = [0x89, 6, 0, 0b0011, 1, GED_IRQ as u8, 0, 0, 0];
        assert!(has(&g, &irq));
    }
}
