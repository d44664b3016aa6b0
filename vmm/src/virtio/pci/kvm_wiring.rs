//! The KVM side of a virtio-pci device: each queue's notification address is a KVM ioeventfd
//! and each interrupt (a queue's, the configuration change's) a KVM irqfd on a GSI of its own,
//! routed to the MSI-X vector the driver chose. The eventfds are what the device (a vhost-user
//! backend) is given, so the data path never enters the vmm. The ioeventfds follow the BAR:
//! when the guest moves it or switches memory decoding off, the transport moves them
//! ([`TransportWiring::move_notifications`]).
//!
//! MSI-X masking is done by removing a vector's route. KVM drops an irqfd signal that has no
//! route, so the vmm cannot latch it in the PBA; instead, when a vector is unmasked, its
//! interrupt is sent once, as if it had been pending. A virtio driver takes an interrupt with
//! no new used buffers as a no-op, so none is lost and none does harm.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

use super::{InterruptSource, TransportWiring};
use crate::irq_routing::{IrqRouter, IrqRoutingError};
use crate::virtio::msix::{Msix, NO_VECTOR};

#[derive(Debug, thiserror::Error)]
pub enum KvmWiringError {
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM: cannot register {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot give {what} a GSI")]
    Gsi {
        what: &'static str,
        #[source]
        source: IrqRoutingError,
    },
}

/// One queue's eventfds: the notification KVM signals on a guest write to the queue's notify
/// address, and the interrupt the device signals, delivered by KVM on `gsi`.
struct QueueEventFds {
    kick: EventFd,
    /// Where `kick` is registered as an ioeventfd now, if anywhere.
    notify_at: Option<u64>,
    call: EventFd,
    gsi: u32,
}

/// A device's ioeventfds, irqfds and MSI routes.
pub struct KvmWiring {
    /// The device's name, for the log.
    name: String,
    router: Arc<IrqRouter>,
    queues: Vec<QueueEventFds>,
    config_evt: EventFd,
    /// The config-change interrupt's GSI (none only while [`KvmWiring::new`] builds it).
    config_gsi: Option<u32>,
    /// [`TransportWiring::teardown`] ran.
    torn_down: bool,
}

fn eventfd() -> Result<EventFd, KvmWiringError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(KvmWiringError::EventFd)
}

impl KvmWiring {
    /// Registers one queue per address in `notify_addresses` (its ioeventfd there, its irqfd on
    /// a new GSI) and the configuration-change irqfd. No GSI has a route until
    /// [`TransportWiring::update_routes`].
    pub fn new(
        name: &str,
        router: Arc<IrqRouter>,
        notify_addresses: &[u64],
    ) -> Result<KvmWiring, KvmWiringError> {
        let kvm = |what| move |source| KvmWiringError::Kvm { what, source };
        let no_gsi = |what| move |source| KvmWiringError::Gsi { what, source };
        // built as it is registered: on an error, dropping it gives back what was taken
        let mut wiring = KvmWiring {
            name: name.to_string(),
            router: router.clone(),
            queues: Vec::new(),
            config_evt: eventfd()?,
            config_gsi: None,
            torn_down: false,
        };
        for addr in notify_addresses {
            let (kick, call) = (eventfd()?, eventfd()?);
            let gsi = router.allocate().map_err(no_gsi("a queue interrupt"))?;
            let at = IoEventAddress::Mmio(*addr);
            if let Err(e) = router.vm().register_ioevent(&kick, &at, NoDatamatch) {
                let _ = router.release(&[gsi]);
                return Err(kvm("a queue notification ioeventfd")(e));
            }
            if let Err(e) = router.vm().register_irqfd(&call, gsi) {
                let _ = router.vm().unregister_ioevent(&kick, &at, NoDatamatch);
                let _ = router.release(&[gsi]);
                return Err(kvm("a queue interrupt irqfd")(e));
            }
            wiring.queues.push(QueueEventFds {
                kick,
                notify_at: Some(*addr),
                call,
                gsi,
            });
        }
        let config_gsi = router
            .allocate()
            .map_err(no_gsi("the config-change interrupt"))?;
        if let Err(e) = router.vm().register_irqfd(&wiring.config_evt, config_gsi) {
            let _ = router.release(&[config_gsi]);
            return Err(kvm("the config-change irqfd")(e));
        }
        wiring.config_gsi = Some(config_gsi);
        Ok(wiring)
    }

    /// Route `gsi` to `vector`'s message (nowhere while it is masked or unset). True when the
    /// route was just made, i.e. the vector was unmasked.
    fn route(&self, msix: &Msix, gsi: u32, vector: u16) -> bool {
        let msg = (vector != NO_VECTOR)
            .then(|| msix.message(vector))
            .flatten();
        match self.router.set(gsi, msg) {
            Ok(unmasked) => unmasked,
            Err(e) => {
                // the cause (KVM's errno) is in the chain
                let error = crate::error_chain(&e);
                tracing::error!(device = %self.name, %error, "cannot route an interrupt");
                false
            }
        }
    }
}

impl TransportWiring for KvmWiring {
    fn queue_eventfds(&self, index: usize) -> Option<(&EventFd, &EventFd)> {
        self.queues.get(index).map(|q| (&q.kick, &q.call))
    }

    fn notify(&self, index: usize) {
        if let Some(q) = self.queues.get(index) {
            let _ = q.kick.write(1);
        }
    }

    fn raise_config_interrupt(&self) {
        let _ = self.config_evt.write(1);
    }

    fn move_notifications(&mut self, addresses: Option<&[u64]>) {
        let vm = self.router.vm();
        for (index, q) in self.queues.iter_mut().enumerate() {
            if let Some(old) = q.notify_at.take() {
                if let Err(e) =
                    vm.unregister_ioevent(&q.kick, &IoEventAddress::Mmio(old), NoDatamatch)
                {
                    tracing::error!(device = %self.name, queue = index, address = format_args!("{old:#x}"), error = %e, "cannot unregister a queue notification ioeventfd");
                }
            }
            let Some(&new) = addresses.and_then(|a| a.get(index)) else {
                continue;
            };
            match vm.register_ioevent(&q.kick, &IoEventAddress::Mmio(new), NoDatamatch) {
                Ok(()) => q.notify_at = Some(new),
                // the queue still works: its notifications exit to the vmm (`notify_exits`)
                Err(e) => {
                    tracing::error!(device = %self.name, queue = index, address = format_args!("{new:#x}"), error = %e, "cannot register a queue notification ioeventfd")
                }
            }
        }
    }

    fn teardown(&mut self) {
        if std::mem::replace(&mut self.torn_down, true) {
            return;
        }
        self.move_notifications(None);
        let vm = self.router.vm();
        let irqfds = self
            .queues
            .iter()
            .map(|q| (&q.call, q.gsi))
            .chain(self.config_gsi.map(|gsi| (&self.config_evt, gsi)));
        // a GSI whose irqfd KVM still has stays out of use: reused, it would cross interrupts
        let mut free = Vec::new();
        for (evt, gsi) in irqfds {
            match vm.unregister_irqfd(evt, gsi) {
                Ok(()) => free.push(gsi),
                Err(e) => {
                    tracing::error!(device = %self.name, gsi, error = %e, "cannot unregister an irqfd")
                }
            }
        }
        if let Err(e) = self.router.release(&free) {
            let error = crate::error_chain(&e);
            tracing::error!(device = %self.name, %error, "cannot give back the device's GSIs");
        }
        tracing::debug!(device = %self.name, gsis = free.len(), "KVM wiring given back");
    }

    fn update_routes(&self, msix: &Msix, config: InterruptSource, queues: &[InterruptSource]) {
        if self.torn_down {
            return; // the GSIs may be another device's by now
        }
        if let Some(gsi) = self.config_gsi {
            if self.route(msix, gsi, config.vector) && config.may_be_pending {
                let _ = self.config_evt.write(1);
            }
        }
        for (q, source) in self.queues.iter().zip(queues) {
            if self.route(msix, q.gsi, source.vector) && source.may_be_pending {
                let _ = q.call.write(1);
            }
        }
    }
}

impl Drop for KvmWiring {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use kvm_ioctls::Kvm;

    use super::*;

    #[test]
    fn moved_ioeventfds_leave_the_old_addresses_for_the_new() {
        let vm = vm_with_an_irqchip();
        let router = Arc::new(IrqRouter::new(vm.clone()));
        let (old, new) = ([0xe000_3000, 0xe000_3004], [0xd000_3000, 0xd000_3004]);
        let mut wiring = KvmWiring::new("blk0", router, &old).expect("wiring");
        // KVM refuses a second ioeventfd (without datamatch) at an address that has one
        let taken = |addr: u64| {
            let probe = EventFd::new(0).expect("eventfd");
            let at = IoEventAddress::Mmio(addr);
            let free = vm.register_ioevent(&probe, &at, NoDatamatch).is_ok();
            if free {
                vm.unregister_ioevent(&probe, &at, NoDatamatch)
                    .expect("probe");
            }
            !free
        };
        let all = |addrs: &[u64]| addrs.iter().all(|a| taken(*a));
        let none = |addrs: &[u64]| !addrs.iter().any(|a| taken(*a));
        assert!(
            all(&old) && none(&new),
            "registered where the BAR was created"
        );
        wiring.move_notifications(Some(&new));
        assert!(none(&old) && all(&new), "moved");
        wiring.move_notifications(None);
        assert!(none(&old) && none(&new), "nowhere");
        wiring.move_notifications(Some(&old));
        assert!(all(&old) && none(&new), "back");
    }

    #[test]
    fn a_torn_down_wiring_gives_back_its_addresses_and_gsis() {
        let vm = vm_with_an_irqchip();
        let router = Arc::new(IrqRouter::new(vm.clone()));
        let addrs = [0xe001_3000, 0xe001_3004];
        for round in 0..100 {
            let mut wiring = KvmWiring::new("blk1", router.clone(), &addrs)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(router.in_use().0, 3, "two queues and the config change");
            wiring.teardown();
            assert_eq!(router.in_use(), (0, 0), "round {round}");
            wiring.teardown(); // twice: nothing more
            drop(wiring);
        }
        // the addresses are free again: a new ioeventfd fits there
        let probe = EventFd::new(0).expect("eventfd");
        vm.register_ioevent(&probe, &IoEventAddress::Mmio(addrs[0]), NoDatamatch)
            .expect("the address was given back");
    }

    /// Named for the filter `irq_routing`: the wiring's side of the GSI limit.
    #[test]
    fn wiring_fails_cleanly_once_irq_routing_has_no_gsi_left() {
        let router = Arc::new(IrqRouter::new(vm_with_an_irqchip()));
        let mut handed_out = Vec::new();
        for _ in 0..=kvm_bindings::KVM_MAX_IRQ_ROUTES {
            match router.allocate() {
                Ok(gsi) => handed_out.push(gsi),
                Err(_) => break,
            }
        }
        assert!(
            !handed_out.is_empty(),
            "the router handed out no GSI at all"
        );
        let out_of = |r: Result<KvmWiring, KvmWiringError>| match r {
            Err(KvmWiringError::Gsi {
                what,
                source: IrqRoutingError::Exhausted { .. },
            }) => what,
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("wired without a GSI"),
        };
        let err = out_of(KvmWiring::new("blk0", router.clone(), &[0xe000_3000]));
        assert_eq!(err, "a queue interrupt");
        let err = out_of(KvmWiring::new("blk1", router, &[]));
        assert_eq!(err, "the config-change interrupt");
    }

    /// A VM with an in-kernel irqchip (the tests' one line if /dev/kvm is missing).
    fn vm_with_an_irqchip() -> Arc<kvm_ioctls::VmFd> {
        let kvm = Kvm::new().expect("/dev/kvm is missing or inaccessible: this test needs KVM");
        let vm = Arc::new(kvm.create_vm().expect("VM"));
        vm.create_irq_chip().expect("irqchip");
        vm
    }

    /// A VM with an in-kernel irqchip and vCPU 0, whose local APIC accepts interrupts.
    fn vm_with_a_lapic() -> (Arc<kvm_ioctls::VmFd>, kvm_ioctls::VcpuFd) {
        let vm = vm_with_an_irqchip();
        let vcpu = vm.create_vcpu(0).expect("vCPU");
        let mut lapic = vcpu.get_lapic().expect("LAPIC");
        // the spurious-interrupt register: APIC software-enabled (bit 8), vector 0xff
        for (i, b) in 0x1ffu32.to_le_bytes().iter().enumerate() {
            lapic.regs[0xf0 + i] = *b as _;
        }
        vcpu.set_lapic(&lapic).expect("LAPIC");
        (vm, vcpu)
    }

    /// Whether `vector` waits in the LAPIC's interrupt request register.
    fn requested(vcpu: &kvm_ioctls::VcpuFd, vector: u8) -> bool {
        let lapic = vcpu.get_lapic().expect("LAPIC");
        let word = 0x200 + usize::from(vector / 32) * 0x10;
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[word + i] as u8);
        u32::from_le_bytes(bytes) & (1 << (vector % 32)) != 0
    }

    /// Forget every requested interrupt (as if the guest had taken them).
    fn clear_requests(vcpu: &kvm_ioctls::VcpuFd) {
        let mut lapic = vcpu.get_lapic().expect("LAPIC");
        for b in &mut lapic.regs[0x200..0x280] {
            *b = 0;
        }
        vcpu.set_lapic(&lapic).expect("LAPIC");
    }

    /// An MSI-X table whose vector `v` sends vector `0x41 + v` to vCPU 0, all unmasked.
    fn msix_to_cpu0(vectors: u16) -> Msix {
        let mut msix = Msix::new(vectors);
        for v in 0..u64::from(vectors) {
            msix.write_table(v * 16, &0xfee0_0000u32.to_le_bytes());
            msix.write_table(v * 16 + 8, &(0x41 + v as u32).to_le_bytes());
            msix.write_table(v * 16 + 12, &0u32.to_le_bytes());
        }
        msix.set_control(0x8000);
        msix
    }

    #[test]
    fn interrupts_reach_the_vector_the_driver_chose_and_an_unmasked_one_is_sent_once() {
        let (vm, vcpu) = vm_with_a_lapic();
        let router = Arc::new(IrqRouter::new(vm));
        let wiring = KvmWiring::new("blk0", router, &[0xe000_3000]).expect("wiring");
        let (kick, call) = wiring.queue_eventfds(0).expect("queue 0");
        assert!(wiring.queue_eventfds(1).is_none());
        let (config, queue) = (0x41, 0x42);
        let source = |vector, may_be_pending| InterruptSource {
            vector,
            may_be_pending,
        };
        let eventually = |vector| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !requested(&vcpu, vector) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "vector {vector:#x} never came"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };

        // no route yet: a signal goes nowhere
        call.write(1).unwrap();
        assert!(!requested(&vcpu, queue));

        // routed: the config interrupt, which may be pending, is sent as the vector opens
        let mut msix = msix_to_cpu0(2);
        wiring.update_routes(&msix, source(0, true), &[source(1, false)]);
        eventually(config);
        assert!(!requested(&vcpu, queue), "the queue's had nothing pending");
        clear_requests(&vcpu);
        call.write(1).unwrap();
        eventually(queue);
        clear_requests(&vcpu);
        wiring.raise_config_interrupt();
        eventually(config);
        clear_requests(&vcpu);

        // the driver masks the queue's vector: its signals are dropped
        msix.write_table(16 + 12, &1u32.to_le_bytes());
        wiring.update_routes(&msix, source(0, true), &[source(1, true)]);
        call.write(1).unwrap();
        wiring.raise_config_interrupt(); // a marker that the write above was handled
        eventually(config);
        assert!(!requested(&vcpu, queue), "masked");
        clear_requests(&vcpu);

        // unmasked: the queue's interrupt is sent once, as if it had been pending; the
        // config vector, which stayed routed, is not sent again
        msix.write_table(16 + 12, &0u32.to_le_bytes());
        wiring.update_routes(&msix, source(0, true), &[source(1, true)]);
        eventually(queue);
        assert!(!requested(&vcpu, config));

        // no vector at all: no route
        clear_requests(&vcpu);
        wiring.update_routes(&msix, source(NO_VECTOR, true), &[source(1, false)]);
        wiring.raise_config_interrupt();
        call.write(1).unwrap();
        eventually(queue);
        assert!(!requested(&vcpu, config), "NO_VECTOR routes nowhere");

        // a write to the notify area that exits to the vmm still kicks the queue
        assert!(kick.read().is_err(), "nothing kicked yet");
        wiring.notify(0);
        wiring.notify(7); // no such queue: ignored
        assert_eq!(kick.read().unwrap(), 1);
    }

    #[test]
    fn a_notification_that_cannot_move_leaves_its_queue_to_exit_and_is_retried_later() {
        let vm = vm_with_an_irqchip();
        let router = Arc::new(IrqRouter::new(vm.clone()));
        let (old, new) = ([0xe000_3000, 0xe000_3004], [0xd000_3000, 0xd000_3004]);
        let mut wiring = KvmWiring::new("blk0", router, &old).expect("wiring");
        // something else holds queue 0's new address
        let squatter = EventFd::new(0).expect("eventfd");
        let at = IoEventAddress::Mmio(new[0]);
        vm.register_ioevent(&squatter, &at, NoDatamatch)
            .expect("squatter");
        wiring.move_notifications(Some(&new));
        let places: Vec<_> = wiring.queues.iter().map(|q| q.notify_at).collect();
        assert_eq!(
            places,
            vec![None, Some(new[1])],
            "queue 1 moved, queue 0 nowhere"
        );

        // queue 1's ioeventfd vanished behind the wiring's back: the next move still works
        let (kick1, _) = wiring.queue_eventfds(1).expect("queue 1");
        vm.unregister_ioevent(kick1, &IoEventAddress::Mmio(new[1]), NoDatamatch)
            .expect("unregister");
        vm.unregister_ioevent(&squatter, &at, NoDatamatch)
            .expect("squatter");
        wiring.move_notifications(Some(&old));
        let places: Vec<_> = wiring.queues.iter().map(|q| q.notify_at).collect();
        assert_eq!(places, vec![Some(old[0]), Some(old[1])], "both back");
    }
}
