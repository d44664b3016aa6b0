//! KVM's GSI routing table: the IOAPIC (and PIC) pins KVM sets up by default, plus one MSI
//! route per device interrupt (a virtqueue's or a config-change vector). `KVM_SET_GSI_ROUTING`
//! replaces the whole table, so every change rebuilds it from this list.
//!
//! The table holds at most `KVM_MAX_IRQ_ROUTES` entries (the kernel reports its own through
//! `KVM_CAP_IRQ_ROUTING`), and no GSI may reach that number. The interrupt controllers' pins
//! take `IRQCHIP_ROUTES` (40) of them; a GSI for an MSI interrupt is only handed out while its
//! route still fits, so the pins' routes are always in the table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use kvm_ioctls::{Cap, VmFd};

const IOAPIC_PINS: u32 = 24;
/// The PIC's pins (8 on the master, 8 on the slave), which are IOAPIC pins 0-15 as well.
const PIC_PINS: u32 = 16;
/// The routes of the interrupt controllers' pins: every IOAPIC pin, and the PIC pins.
const IRQCHIP_ROUTES: usize = (IOAPIC_PINS + PIC_PINS) as usize;

#[derive(Debug, thiserror::Error)]
pub enum IrqRoutingError {
    #[error(
        "no GSI is left for another MSI interrupt: KVM's routing table holds {limit} routes, \
         {IRQCHIP_ROUTES} of them for the interrupt controllers' pins"
    )]
    Exhausted { limit: usize },
    #[error("{routes} routes do not fit in KVM's routing table")]
    TooManyRoutes {
        routes: usize,
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    #[error("KVM refused the GSI routing table")]
    Kvm(#[source] kvm_ioctls::Error),
}

/// An MSI message: where the guest asked the interrupt to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

pub struct IrqRouter {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
}

impl IrqRouter {
    pub fn new(vm: Arc<VmFd>) -> IrqRouter {
        let limit = route_limit(&vm);
        IrqRouter {
            vm,
            routes: Mutex::new(Routes::new(limit)),
        }
    }

    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// A GSI for a new MSI interrupt source (no route until [`IrqRouter::set`]); an error
    /// once KVM's routing table could not hold its route.
    pub fn allocate(&self) -> Result<u32, IrqRoutingError> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate()
    }

    /// Give back the GSIs of a device that is gone (their irqfds unregistered): their routes
    /// leave the table and the GSIs are handed out again.
    pub fn release(&self, gsis: &[u32]) -> Result<(), IrqRoutingError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let had_routes = gsis.iter().any(|g| routes.msi.contains_key(g));
        for g in gsis {
            routes.msi.remove(g);
        }
        if had_routes {
            let table = routes.table()?;
            self.vm
                .set_gsi_routing(&table)
                .map_err(IrqRoutingError::Kvm)?;
        }
        routes.free(gsis);
        Ok(())
    }

    /// GSIs handed out and not given back, and MSI routes in the table.
    pub fn in_use(&self) -> (usize, usize) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        (routes.handed_out(), routes.msi.len())
    }

    /// Route `gsi` to `msg`, or nowhere (`None`: the interrupt is dropped, e.g. while masked).
    /// Returns true when `gsi` had no route before and has one now (a vector was unmasked).
    /// When KVM refuses the new table, the route stays as it was.
    pub fn set(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<bool, IrqRoutingError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let change = routes.set(gsi, msg);
        if change.changed() {
            let applied = routes.table().and_then(|table| {
                self.vm
                    .set_gsi_routing(&table)
                    .map_err(IrqRoutingError::Kvm)
            });
            if let Err(e) = applied {
                routes.set(gsi, change.previous);
                return Err(e);
            }
        }
        Ok(change.unmasked())
    }
}

/// How many routes KVM takes in one table: the kernel's `KVM_CAP_IRQ_ROUTING`, never more
/// than kvm-bindings can pass.
fn route_limit(vm: &VmFd) -> usize {
    match usize::try_from(vm.check_extension_int(Cap::IrqRouting)) {
        Ok(kernel) if kernel > 0 => kernel.min(KVM_MAX_IRQ_ROUTES),
        _ => KVM_MAX_IRQ_ROUTES,
    }
}

/// The routing table's contents, apart from KVM: the GSIs handed out and where each MSI
/// one goes.
#[derive(Debug)]
struct Routes {
    /// The most routes one table may hold (and the bound every GSI stays below).
    limit: usize,
    next_gsi: u32,
    /// GSIs below `next_gsi` given back (a removed device's), handed out again first.
    free: BTreeSet<u32>,
    msi: BTreeMap<u32, MsiMessage>,
}

/// What [`Routes::set`] did to one GSI's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    previous: Option<MsiMessage>,
    now: Option<MsiMessage>,
}

impl Change {
    fn changed(&self) -> bool {
        self.previous != self.now
    }

    /// The GSI had no route and has one now.
    fn unmasked(&self) -> bool {
        self.previous.is_none() && self.now.is_some()
    }
}

impl Routes {
    fn new(limit: usize) -> Routes {
        Routes {
            limit,
            next_gsi: IOAPIC_PINS,
            free: BTreeSet::new(),
            msi: BTreeMap::new(),
        }
    }

    /// The next GSI after the IOAPIC's pins, while the table can hold a route for each GSI
    /// handed out. The last one is `limit - 17` (below `limit`, as KVM requires).
    fn allocate(&mut self) -> Result<u32, IrqRoutingError> {
        if let Some(gsi) = self.free.pop_first() {
            return Ok(gsi);
        }
        let handed_out = (self.next_gsi - IOAPIC_PINS) as usize;
        if IRQCHIP_ROUTES + handed_out >= self.limit {
            return Err(IrqRoutingError::Exhausted { limit: self.limit });
        }
        let gsi = self.next_gsi;
        self.next_gsi += 1;
        Ok(gsi)
    }

    /// Take `gsis` back (ours, handed out before; others are ignored).
    fn free(&mut self, gsis: &[u32]) {
        let ours = gsis
            .iter()
            .filter(|g| (IOAPIC_PINS..self.next_gsi).contains(*g));
        self.free.extend(ours);
    }

    fn handed_out(&self) -> usize {
        (self.next_gsi - IOAPIC_PINS) as usize - self.free.len()
    }

    fn set(&mut self, gsi: u32, msg: Option<MsiMessage>) -> Change {
        let previous = match msg {
            Some(m) => self.msi.insert(gsi, m),
            None => self.msi.remove(&gsi),
        };
        Change { previous, now: msg }
    }

    /// The whole table: the interrupt controllers' pins, then one route per routed MSI GSI.
    fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let mut entries = Vec::with_capacity(IRQCHIP_ROUTES + self.msi.len());
        for gsi in 0..IOAPIC_PINS {
            if gsi < 8 {
                entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
            } else if gsi < PIC_PINS {
                entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
            }
            entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (gsi, m) in &self.msi {
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
        entries
    }

    fn table(&self) -> Result<KvmIrqRouting, IrqRoutingError> {
        let entries = self.entries();
        KvmIrqRouting::from_entries(&entries).map_err(|source| IrqRoutingError::TooManyRoutes {
            routes: entries.len(),
            source,
        })
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

#[cfg(test)]
mod tests {
    use kvm_bindings::{kvm_irq_routing_irqchip, kvm_irq_routing_msi};
    use kvm_ioctls::Kvm;

    use super::*;

    const MSG: MsiMessage = MsiMessage {
        address: 0x0000_0001_fee0_100c,
        data: 0x4041,
    };

    fn pins(entries: &[kvm_irq_routing_entry]) -> Vec<(u32, u32, u32)> {
        entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            .map(|e| {
                // SAFETY: an IRQCHIP entry's union holds `irqchip` (plain integers).
                let chip: kvm_irq_routing_irqchip = unsafe { e.u.irqchip };
                (e.gsi, chip.irqchip, chip.pin)
            })
            .collect()
    }

    fn msis(entries: &[kvm_irq_routing_entry]) -> Vec<(u32, u32, u32, u32)> {
        entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_MSI)
            .map(|e| {
                // SAFETY: an MSI entry's union holds `msi` (plain integers).
                let msi: kvm_irq_routing_msi = unsafe { e.u.msi };
                (e.gsi, msi.address_lo, msi.address_hi, msi.data)
            })
            .collect()
    }

    /// Every IOAPIC pin on its GSI, and the PIC's 16 pins on GSIs 0-15.
    fn all_pins() -> Vec<(u32, u32, u32)> {
        let mut want = Vec::new();
        for gsi in 0..24 {
            match gsi {
                0..8 => want.push((gsi, KVM_IRQCHIP_PIC_MASTER, gsi)),
                8..16 => want.push((gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8)),
                _ => {}
            }
            want.push((gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        want
    }

    #[test]
    fn the_table_always_has_the_ioapic_and_pic_pins() {
        let mut routes = Routes::new(KVM_MAX_IRQ_ROUTES);
        assert_eq!(pins(&routes.entries()), all_pins());
        assert_eq!(routes.entries().len(), IRQCHIP_ROUTES);
        let gsi = routes.allocate().expect("a GSI");
        routes.set(gsi, Some(MSG));
        assert_eq!(pins(&routes.entries()), all_pins(), "beside an MSI route");
    }

    #[test]
    fn an_msi_route_carries_the_address_halves_and_the_data() {
        let mut routes = Routes::new(KVM_MAX_IRQ_ROUTES);
        let (a, b) = (routes.allocate().unwrap(), routes.allocate().unwrap());
        assert_eq!((a, b), (24, 25), "MSI GSIs follow the IOAPIC pins");
        routes.set(b, Some(MSG));
        routes.set(
            a,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 7,
            }),
        );
        let table = routes.table().expect("table");
        assert_eq!(
            msis(table.as_slice()),
            [(a, 0xfee0_0000, 0, 7), (b, 0xfee0_100c, 0x1, 0x4041)]
        );
    }

    #[test]
    fn a_masked_route_leaves_the_table() {
        let mut routes = Routes::new(KVM_MAX_IRQ_ROUTES);
        let (a, b) = (routes.allocate().unwrap(), routes.allocate().unwrap());
        routes.set(a, Some(MSG));
        routes.set(b, Some(MSG));
        routes.set(a, None);
        let gsis: Vec<u32> = msis(&routes.entries()).iter().map(|m| m.0).collect();
        assert_eq!(gsis, [b]);
        assert_eq!(pins(&routes.entries()), all_pins());
    }

    #[test]
    fn set_reports_unmasked_exactly_when_a_gsi_gains_a_route() {
        let mut routes = Routes::new(KVM_MAX_IRQ_ROUTES);
        let gsi = routes.allocate().unwrap();
        let other = MsiMessage { data: 1, ..MSG };
        // (message, changed, unmasked)
        let steps = [
            (None, false, false),       // no route, still none
            (Some(MSG), true, true),    // gains one
            (Some(MSG), false, false),  // the same again
            (Some(other), true, false), // moved: had one already
            (None, true, false),        // masked
            (None, false, false),       // masked again
            (Some(other), true, true),  // unmasked
        ];
        for (i, (msg, changed, unmasked)) in steps.into_iter().enumerate() {
            let change = routes.set(gsi, msg);
            assert_eq!(
                (change.changed(), change.unmasked()),
                (changed, unmasked),
                "step {i}"
            );
        }
    }

    #[test]
    fn gsis_run_out_before_the_table_would_drop_the_pins() {
        let mut routes = Routes::new(KVM_MAX_IRQ_ROUTES);
        let mut gsis = Vec::new();
        let err = loop {
            match routes.allocate() {
                Ok(gsi) => gsis.push(gsi),
                Err(e) => break e,
            }
            assert!(gsis.len() <= KVM_MAX_IRQ_ROUTES, "allocate has no bound");
        };
        assert!(matches!(
            err,
            IrqRoutingError::Exhausted {
                limit: KVM_MAX_IRQ_ROUTES
            }
        ));
        assert_eq!(
            err.to_string(),
            "no GSI is left for another MSI interrupt: KVM's routing table holds 4096 routes, \
             40 of them for the interrupt controllers' pins"
        );
        assert_eq!(gsis.len(), KVM_MAX_IRQ_ROUTES - IRQCHIP_ROUTES);
        assert!(gsis.iter().all(|&g| (g as usize) < KVM_MAX_IRQ_ROUTES));
        assert!(routes.allocate().is_err(), "and stays refused");
        // every GSI handed out routed: the table is full and still has every pin
        for gsi in &gsis {
            routes.set(*gsi, Some(MSG));
        }
        let table = routes.table().expect("a full table fits");
        assert_eq!(table.as_slice().len(), KVM_MAX_IRQ_ROUTES);
        assert_eq!(pins(table.as_slice()), all_pins());
    }

    #[test]
    fn given_back_gsis_are_handed_out_again_first_and_lose_their_routes() {
        let mut routes = Routes::new(KVM_MAX_IRQ_ROUTES);
        let gsis: Vec<u32> = (0..4).map(|_| routes.allocate().unwrap()).collect();
        assert_eq!(gsis, [24, 25, 26, 27]);
        routes.set(25, Some(MSG));
        routes.msi.remove(&25);
        routes.free(&[25, 26, 3, 999]);
        assert_eq!(
            routes.handed_out(),
            2,
            "pins and unknown GSIs are not taken back"
        );
        assert_eq!(routes.allocate().unwrap(), 25);
        assert_eq!(routes.allocate().unwrap(), 26);
        assert_eq!(routes.allocate().unwrap(), 28);
        assert_eq!(routes.handed_out(), 5);
    }

    #[test]
    fn an_oversized_table_is_an_error_not_an_empty_table() {
        let mut routes = Routes::new(KVM_MAX_IRQ_ROUTES);
        // more routes than allocate hands out (as a bug elsewhere could make)
        for gsi in 24..24 + KVM_MAX_IRQ_ROUTES as u32 {
            routes.set(gsi, Some(MSG));
        }
        match routes.table() {
            Err(IrqRoutingError::TooManyRoutes { routes, .. }) => {
                assert_eq!(routes, KVM_MAX_IRQ_ROUTES + IRQCHIP_ROUTES)
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(t) => panic!("a table of {} routes", t.as_slice().len()),
        }
    }

    /// The limit is KVM's own: a table with every GSI `allocate` hands out routed, and the
    /// highest of them, is accepted by the kernel.
    #[test]
    fn kvm_accepts_the_fullest_table_the_router_builds() {
        let kvm = Kvm::new().expect("/dev/kvm is missing or inaccessible: this test needs KVM");
        let vm = Arc::new(kvm.create_vm().expect("VM"));
        vm.create_irq_chip().expect("irqchip");
        let limit = route_limit(&vm);
        assert!(limit > IRQCHIP_ROUTES, "KVM's routing table holds {limit}");
        let router = IrqRouter::new(vm.clone());
        let mut last = None;
        for _ in 0..=limit {
            match router.allocate() {
                Ok(gsi) => last = Some(gsi),
                Err(_) => break,
            }
        }
        let last = last.expect("some GSI");
        assert_eq!(
            last as usize,
            limit - (IRQCHIP_ROUTES - IOAPIC_PINS as usize) - 1
        );
        assert!(router
            .set(last, Some(MSG))
            .expect("KVM takes the highest GSI"));
        assert!(!router.set(last, None).expect("and its removal"));

        let mut full = Routes::new(limit);
        for _ in 0..=limit {
            match full.allocate() {
                Ok(gsi) => full.set(gsi, Some(MSG)),
                Err(_) => break,
            };
        }
        let table = full.table().expect("table");
        assert_eq!(table.as_slice().len(), limit);
        vm.set_gsi_routing(&table).expect("KVM takes a full table");

        // and the bound on GSIs is KVM's too
        let mut beyond = Routes::new(limit);
        beyond.set(limit as u32, Some(MSG));
        let table = beyond.table().expect("table");
        vm.set_gsi_routing(&table)
            .expect_err("KVM refuses a GSI at its limit");
    }

    #[test]
    fn a_route_kvm_refuses_is_not_kept() {
        let kvm = Kvm::new().expect("/dev/kvm is missing or inaccessible: this test needs KVM");
        let vm = Arc::new(kvm.create_vm().expect("VM"));
        vm.create_irq_chip().expect("irqchip");
        let router = IrqRouter::new(vm);
        // an MSI route on an IOAPIC pin's GSI: KVM allows one non-irqchip route per GSI only
        let err = router.set(4, Some(MSG)).expect_err("refused");
        assert!(matches!(err, IrqRoutingError::Kvm(_)), "{err}");
        let gsi = router.allocate().unwrap();
        assert!(router
            .set(gsi, Some(MSG))
            .expect("a good route still goes in"));
    }
}
