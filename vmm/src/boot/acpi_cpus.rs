//! The AML of ACPI vCPU hotplug ([`crate::devices::cpu_hotplug`] has the registers): the
//! controller `\_SB_.PRES` and a processor device per possible vCPU under `\_SB_.CPUS`, as
//! Cloud Hypervisor (and QEMU's "modern" CPU hotplug) have them; the GED's `_EVT` calls
//! `\_SB_.CPUS.CSCN` for its CPU bit. Only a VM whose `max_cpus` is above `cpus` gets them.
//!
//! In ASL:
//!
//! ```text
//! Device (\_SB.PRES) {
//!     Name (_HID, EisaId ("PNP0A06")) Name (_UID, "CPU Hotplug Controller") Name (_STA, 0x0B)
//!     Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, 0xFED00020, 0x0C) })
//!     Mutex (CPLK, 0)
//!     OperationRegion (PRST, SystemMemory, 0xFED00020, 0x0C)
//!     Field (PRST, DWordAcc, NoLock, WriteAsZeros) { CSEL, 32, CPEN, 1, CINS, 1, CRMV, 1, CEJ0, 1 }
//! }
//! Device (\_SB.CPUS) {
//!     Name (_HID, "ACPI0010") Name (_CID, EisaId ("PNP0A05"))
//!     Method (CSTA, 1, Serialized) {   // a vCPU's _STA: 0xF present, 0 absent
//!         Acquire (\_SB.PRES.CPLK, 0xFFFF) \_SB.PRES.CSEL = Arg0  Local0 = 0
//!         If (\_SB.PRES.CPEN == 1) { Local0 = 0x0F }  Release (\_SB.PRES.CPLK) Return (Local0)
//!     }
//!     Method (CEJ0, 1, Serialized) { Acquire … CSEL = Arg0  CEJ0 = 1  Release … }
//!     Method (CTFY, 2) { If (Arg0 == 0) { Notify (C000, Arg1) } … }
//!     Method (CSCN, 0, Serialized) {   // the GED's CPU event
//!         Acquire … Local0 = 0
//!         While (Local0 < MAX) {
//!             CSEL = Local0
//!             If (CINS == 1) { CTFY (Local0, 1)  CINS = 1 }   // device check: hot-add
//!             If (CRMV == 1) { CTFY (Local0, 3)  CRMV = 1 }   // eject request
//!             Local0 += 1
//!         }
//!         Release …
//!     }
//!     Device (C001) { Name (_HID, "ACPI0007") Name (_UID, 1) Method (_STA) { Return (CSTA (1)) }
//!                     Name (_MAT, Buffer () { /* MADT local APIC 1, enabled */ })
//!                     Method (_EJ0, 1) { CEJ0 (1) } }
//!     …   // C000 has no _EJ0: the boot vCPU stays
//! }
//! ```
//!
//! `_MAT` is what Linux takes a hot-added CPU's APIC id from; the MADT lists every possible
//! vCPU (those absent at boot as "online capable"), which recent kernels require of a CPU they
//! accept later.

use acpi_tables::madt::{EnabledStatus, ProcessorLocalApic};
use acpi_tables::{aml, Aml};

use super::acpi_hotplug::{bytes, Raw};
use crate::devices::cpu_hotplug::CPU_HOTPLUG_SIZE;
use crate::layout::CPU_HOTPLUG_START;

const SEL: &str = "\\_SB_.PRES.CSEL";
const LOCK: &str = "\\_SB_.PRES.CPLK";

fn cpu_name(id: u8) -> String {
    format!("C{id:03X}")
}

/// `\_SB_.PRES`, the controller.
pub fn controller() -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A06"));
    let uid = aml::Name::new("_UID".into(), &"CPU Hotplug Controller");
    let sta = aml::Name::new("_STA".into(), &0x0bu8);
    let (base, len) = (CPU_HOTPLUG_START as u32, CPU_HOTPLUG_SIZE as u32);
    let mem = aml::Memory32Fixed::new(true, base, len);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&mem]));
    let mutex = aml::Mutex::new("CPLK".into(), 0);
    let region = aml::OpRegion::new("PRST".into(), aml::OpRegionSpace::SystemMemory, &base, &len);
    let field = aml::Field::new(
        "PRST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Named(*b"CSEL", 32),
            aml::FieldEntry::Named(*b"CPEN", 1),
            aml::FieldEntry::Named(*b"CINS", 1),
            aml::FieldEntry::Named(*b"CRMV", 1),
            aml::FieldEntry::Named(*b"CEJ0", 1),
        ],
    );
    bytes(&aml::Device::new(
        "_SB_.PRES".into(),
        vec![&hid, &uid, &sta, &crs, &mutex, &region, &field],
    ))
}

fn methods(max: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let acquire = aml::Acquire::new(LOCK.into(), 0xffff);
    let release = aml::Release::new(LOCK.into());
    let sel = aml::Path::new(SEL);
    let local = aml::Local(0);
    // CSTA
    let select = aml::Store::new(&sel, &aml::Arg(0));
    let zero = aml::Store::new(&local, &aml::ZERO);
    let cpen = aml::Path::new("\\_SB_.PRES.CPEN");
    let present = aml::Equal::new(&cpen, &aml::ONE);
    let fifteen = aml::Store::new(&local, &0x0fu8);
    let if_present = aml::If::new(&present, vec![&fifteen]);
    let ret = aml::Return::new(&local);
    out.extend(bytes(&aml::Method::new(
        "CSTA".into(),
        1,
        true,
        vec![&acquire, &select, &zero, &if_present, &release, &ret],
    )));
    // CEJ0
    let cej0 = aml::Path::new("\\_SB_.PRES.CEJ0");
    let eject = aml::Store::new(&cej0, &aml::ONE);
    out.extend(bytes(&aml::Method::new(
        "CEJ0".into(),
        1,
        true,
        vec![&acquire, &select, &eject, &release],
    )));
    // CTFY
    let ids: Vec<u8> = (0..max).collect();
    let paths: Vec<aml::Path> = ids.iter().map(|&i| aml::Path::new(&cpu_name(i))).collect();
    let notifies: Vec<aml::Notify> = paths
        .iter()
        .map(|p| aml::Notify::new(p, &aml::Arg(1)))
        .collect();
    let tests: Vec<aml::Equal> = ids
        .iter()
        .map(|i| aml::Equal::new(&aml::Arg(0), i))
        .collect();
    let ifs: Vec<aml::If> = tests
        .iter()
        .zip(&notifies)
        .map(|(t, n)| aml::If::new(t, vec![n]))
        .collect();
    let children: Vec<&dyn Aml> = ifs.iter().map(|i| i as &dyn Aml).collect();
    out.extend(bytes(&aml::Method::new("CTFY".into(), 2, false, children)));
    // CSCN
    let start = aml::Store::new(&local, &aml::ZERO);
    let more = aml::LessThan::new(&local, &max);
    let select_local = aml::Store::new(&sel, &local);
    let cins = aml::Path::new("\\_SB_.PRES.CINS");
    let crmv = aml::Path::new("\\_SB_.PRES.CRMV");
    let inserting = aml::Equal::new(&cins, &aml::ONE);
    let check = aml::MethodCall::new("CTFY".into(), vec![&local, &aml::ONE]);
    let ack_insert = aml::Store::new(&cins, &aml::ONE);
    let on_insert = aml::If::new(&inserting, vec![&check, &ack_insert]);
    let removing = aml::Equal::new(&crmv, &aml::ONE);
    let eject_request = aml::MethodCall::new("CTFY".into(), vec![&local, &3u8]);
    let ack_remove = aml::Store::new(&crmv, &aml::ONE);
    let on_remove = aml::If::new(&removing, vec![&eject_request, &ack_remove]);
    let next = aml::Add::new(&local, &local, &aml::ONE);
    let each = aml::While::new(&more, vec![&select_local, &on_insert, &on_remove, &next]);
    out.extend(bytes(&aml::Method::new(
        "CSCN".into(),
        0,
        true,
        vec![&acquire, &start, &each, &release],
    )));
    out
}

fn cpu_device(id: u8) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &"ACPI0007");
    let uid = aml::Name::new("_UID".into(), &id);
    let csta = aml::MethodCall::new("CSTA".into(), vec![&id]);
    let ret = aml::Return::new(&csta);
    let sta = aml::Method::new("_STA".into(), 0, false, vec![&ret]);
    let lapic = bytes(&ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    let mat = aml::Name::new("_MAT".into(), &aml::BufferData::new(lapic));
    let cej0 = aml::MethodCall::new("CEJ0".into(), vec![&id]);
    let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&cej0]);
    let mut children: Vec<&dyn Aml> = vec![&hid, &uid, &sta, &mat];
    if id != 0 {
        children.push(&ej0);
    }
    bytes(&aml::Device::new(cpu_name(id).as_str().into(), children))
}

/// `\_SB_.CPUS` with its methods and a device per possible vCPU (`max` of them).
pub fn cpus(max: u8) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &"ACPI0010");
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A05"));
    let mut inner = methods(max);
    for id in 0..max {
        inner.extend(cpu_device(id));
    }
    let inner = Raw(inner);
    bytes(&aml::Device::new(
        "_SB_.CPUS".into(),
        vec![&hid, &cid, &inner],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(d: &[u8], s: &[u8]) -> bool {
        d.windows(s.len()).any(|w| w == s)
    }

    #[test]
    fn every_possible_vcpu_has_a_device_and_only_the_boot_one_cannot_be_ejected() {
        let c = cpus(4);
        for name in [
            &b"CPUS"[..],
            b"C000",
            b"C003",
            b"CSTA",
            b"CEJ0",
            b"CTFY",
            b"CSCN",
            b"_MAT",
        ] {
            assert!(has(&c, name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!has(&c, b"C004"));
        // C000 without _EJ0, the three others with one
        assert_eq!(c.windows(4).filter(|w| *w == b"_EJ0").count(), 3);
        let p = controller();
        for name in [
            &b"PRES"[..],
            b"CPLK",
            b"PRST",
            b"CSEL",
            b"CPEN",
            b"CINS",
            b"CRMV",
        ] {
            assert!(has(&p, name), "{}", String::from_utf8_lossy(name));
        }
    }
}
