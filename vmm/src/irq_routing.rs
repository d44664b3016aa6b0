//! KVM's GSI routing table: the IOAPIC (and PIC) pins KVM sets up by default, plus one MSI
//! route per device interrupt (a virtqueue's or a config-change vector). `KVM_SET_GSI_ROUTING`
//! replaces the whole table, so every change rebuilds it from this list.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

const IOAPIC_PINS: u32 = 24;

/// An MSI message: where the guest asked the interrupt to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

pub struct IrqRouter {
    vm: Arc<VmFd>,
    next_gsi: Mutex<u32>,
    msi: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl IrqRouter {
    pub fn new(vm: Arc<VmFd>) -> IrqRouter {
        IrqRouter {
            vm,
            next_gsi: Mutex::new(IOAPIC_PINS),
            msi: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// A GSI for a new MSI interrupt source (no route until [`IrqRouter::set`]).
    pub fn allocate(&self) -> u32 {
        let mut next = self.next_gsi.lock().unwrap_or_else(|e| e.into_inner());
        *next += 1;
        *next - 1
    }

    /// Route `gsi` to `msg`, or nowhere (`None`: the interrupt is dropped, e.g. while masked).
    /// Returns true when `gsi` had no route before and has one now (a vector was unmasked).
    pub fn set(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<bool, kvm_ioctls::Error> {
        let mut msi = self.msi.lock().unwrap_or_else(|e| e.into_inner());
        let (changed, unmasked) = match msg {
            Some(m) => {
                let old = msi.insert(gsi, m);
                (old != Some(m), old.is_none())
            }
            None => (msi.remove(&gsi).is_some(), false),
        };
        if changed {
            self.vm.set_gsi_routing(&table(&msi))?;
        }
        Ok(unmasked)
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn table(msi: &BTreeMap<u32, MsiMessage>) -> KvmIrqRouting {
    let mut entries = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi: *gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        entries.push(e);
    }
    KvmIrqRouting::from_entries(&entries)
        .unwrap_or_else(|_| KvmIrqRouting::new(0).expect("empty routing"))
}
