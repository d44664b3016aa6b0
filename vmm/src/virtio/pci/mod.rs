//! The virtio-pci modern transport (virtio 1.x, section 4.1): one 64-bit BAR holding the common
//! configuration (`common_config.rs`), ISR, device configuration, notification area and the
//! MSI-X table; the device status machine; the queues as the driver sets them up.
//!
//! The data path never comes here: how notifications and interrupts reach KVM is the
//! transport's [`TransportWiring`] ([`kvm_wiring`]: ioeventfds, irqfds, MSI routes), whose
//! eventfds are handed to the device (a vhost-user backend) on DRIVER_OK. What a snapshot keeps
//! of the transport is in [`persist`].

mod common_config;
pub mod kvm_wiring;
pub mod persist;
mod restore;
// also the fuzz harness's transport (crate::fuzz_harness), so compiled in every build
#[doc(hidden)]
pub mod test_utils;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::device_type::DeviceType;
use super::msix::{Msix, NO_VECTOR};
use super::*;
use crate::irq_routing::IrqRouter;
use crate::pci::config::{ConfigSpace, Header};
use crate::pci::PciDevice;
use kvm_wiring::{KvmWiring, KvmWiringError};

pub const BAR_SIZE: u64 = 0x1_0000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = common_config::LEN;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x8000;
const MSIX_PBA: u64 = 0x9000;
/// The most virtqueues a transport serves: one MSI-X vector each and one for configuration
/// changes must fit the table's 4 KiB (16 bytes per entry) in the BAR layout above.
pub const MAX_QUEUES: usize = ((MSIX_PBA - MSIX_TABLE) / 16) as usize - 1;

const VIRTIO_VENDOR: u16 = 0x1af4;
const VIRTIO_MODERN_DEVICE_BASE: u16 = 0x1040;
const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const ISR_CONFIG: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("PCI config space: {0}")]
    Config(#[from] crate::pci::config::ConfigError),
    #[error(transparent)]
    Wiring(#[from] KvmWiringError),
    #[error("the device has {0} queues; a virtio-pci transport serves 1 to {MAX_QUEUES}")]
    QueueCount(usize),
}

/// One interrupt as the wiring needs to know it: its MSI-X vector, and whether it may have
/// been signalled while the vector was masked (then it is sent once when the vector is
/// unmasked, see [`kvm_wiring`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptSource {
    pub vector: u16,
    pub may_be_pending: bool,
}

/// Where a transport's queue notifications and interrupts go: KVM ioeventfds, irqfds and MSI
/// routes in the vmm ([`KvmWiring`]); plain eventfds in tests.
pub trait TransportWiring: Send {
    /// Queue `index`'s notification eventfd (the device waits on it) and interrupt eventfd
    /// (the device writes it).
    fn queue_eventfds(&self, index: usize) -> Option<(&EventFd, &EventFd)>;
    /// A notification for queue `index` reached the vmm instead of KVM's ioeventfd: pass it on.
    fn notify(&self, index: usize);
    /// Raise the configuration-change interrupt.
    fn raise_config_interrupt(&self);
    /// Register the queues' notification eventfds at `addresses` (one per queue) instead of
    /// where they are now; `None`: nowhere, the BAR decodes nothing.
    fn move_notifications(&mut self, addresses: Option<&[u64]>);
    /// Route every interrupt to its MSI-X vector as `msix` says now: `config` for the
    /// configuration change, `queues` one per queue.
    fn update_routes(&self, msix: &Msix, config: InterruptSource, queues: &[InterruptSource]);
    /// The device is gone: give back every KVM resource (ioeventfds, irqfds, GSIs). Nothing
    /// works afterwards; a second call does nothing.
    fn teardown(&mut self) {}
}

/// Per-device counters: how often the guest reached the vmm instead of the backend.
#[derive(Default, Debug)]
pub struct Counters {
    /// Any access to the device's BAR that exited to the vmm.
    pub bar_exits: AtomicU64,
    /// Queue notifications that exited to the vmm (zero while ioeventfds work).
    pub notify_exits: AtomicU64,
    pub config_reads: AtomicU64,
    pub activations: AtomicU64,
}

/// One virtqueue's registers as the driver set them (its eventfds are the wiring's).
struct Queue {
    max: u16,
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Queue {
    fn new(max: u16) -> Queue {
        Queue {
            max,
            size: max,
            vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

pub struct VirtioPciDevice {
    name: String,
    config: ConfigSpace,
    /// `config` as it was at power-on (BARs, capabilities), restored when the machine resets.
    power_on_config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    wiring: Box<dyn TransportWiring>,
    msix: Msix,
    msix_cap: usize,
    /// Where BAR 0 was when the queues' notification eventfds were put at its notify area
    /// (`None`: nowhere, the BAR decoded nothing), see [`VirtioPciDevice::follow_bar`].
    notify_bar: Option<u64>,
    features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    isr: u8,
    activated: bool,
    counters: Arc<Counters>,
}

/// Each queue's notification address for BAR 0 at `bar`.
fn notify_addresses(bar: u64, queues: usize) -> Vec<u64> {
    (0..queues as u64)
        .map(|i| bar + NOTIFY + i * u64::from(NOTIFY_MULTIPLIER))
        .collect()
}

fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let mut cap = vec![CAP_VENDOR, 0, 16, cfg_type, 0, 0, 0, 0];
    cap.extend_from_slice(&(offset as u32).to_le_bytes());
    cap.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        cap[2] = 20;
        cap.extend_from_slice(&x.to_le_bytes());
    }
    cap
}

impl VirtioPciDevice {
    /// A transport for `device` with its BAR at `bar_addr`; registers the queues' ioeventfds
    /// and irqfds with KVM.
    pub fn new(
        name: &str,
        device: Box<dyn VirtioDevice>,
        router: Arc<IrqRouter>,
        bar_addr: u64,
    ) -> Result<VirtioPciDevice, TransportError> {
        Self::with_wiring(name, device, bar_addr, |notify_addresses| {
            Ok(Box::new(KvmWiring::new(name, router, notify_addresses)?))
        })
    }

    /// A transport for `device` with its BAR at `bar_addr`, whose notifications and interrupts
    /// go through the wiring `wire` makes for the queues' notify addresses.
    fn with_wiring(
        name: &str,
        device: Box<dyn VirtioDevice>,
        bar_addr: u64,
        wire: impl FnOnce(&[u64]) -> Result<Box<dyn TransportWiring>, TransportError>,
    ) -> Result<VirtioPciDevice, TransportError> {
        let device_type = device.device_type();
        let mut config = ConfigSpace::new(&Header {
            vendor: VIRTIO_VENDOR,
            device: VIRTIO_MODERN_DEVICE_BASE + device_type as u16,
            class: DeviceType::of(device_type).pci_class,
            revision: 1,
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x40,
        });
        let max_sizes = device.queue_max_sizes();
        if !(1..=MAX_QUEUES).contains(&max_sizes.len()) {
            return Err(TransportError::QueueCount(max_sizes.len()));
        }
        config.add_bar64(0, bar_addr, BAR_SIZE)?;
        config.add_capability(&virtio_cap(CFG_COMMON, COMMON, COMMON_LEN, None), &[])?;
        let notify_len = (max_sizes.len() as u64 * u64::from(NOTIFY_MULTIPLIER)).max(4);
        let notify = virtio_cap(CFG_NOTIFY, NOTIFY, notify_len, Some(NOTIFY_MULTIPLIER));
        config.add_capability(&notify, &[])?;
        config.add_capability(&virtio_cap(CFG_ISR, ISR, 1, None), &[])?;
        config.add_capability(
            &virtio_cap(CFG_DEVICE, DEVICE_CFG, DEVICE_CFG_LEN, None),
            &[],
        )?;
        let msix = Msix::new(max_sizes.len() as u16 + 1);
        let (cap, writable) = msix.capability(0, MSIX_TABLE as u32, MSIX_PBA as u32);
        let msix_cap = config.add_capability(&cap, &writable)?;

        let wiring = wire(&notify_addresses(bar_addr, max_sizes.len()))?;
        let features = device.features() & !F_TRANSPORT_UNSUPPORTED;
        Ok(VirtioPciDevice {
            name: name.to_string(),
            power_on_config: config.clone(),
            config,
            device,
            wiring,
            msix,
            msix_cap,
            notify_bar: Some(bar_addr),
            features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: max_sizes.iter().map(|max| Queue::new(*max)).collect(),
            isr: 0,
            activated: false,
            counters: Arc::new(Counters::default()),
        })
    }

    /// Keep the queues' notification eventfds where BAR 0 decodes them: moved when the guest
    /// moves the BAR, removed while memory decoding is off or the BAR would wrap past 2^64.
    /// (They are registered at the BAR's power-on address from the start, so that a failure
    /// to register them is an error when the VM starts.)
    fn follow_bar(&mut self) {
        let bar = self.config.bar_addr(0);
        let decoded =
            (self.config.memory_enabled() && bar.checked_add(BAR_SIZE).is_some()).then_some(bar);
        if decoded == self.notify_bar {
            return;
        }
        let addresses = decoded.map(|bar| notify_addresses(bar, self.queues.len()));
        self.wiring.move_notifications(addresses.as_deref());
        tracing::debug!(device = %self.name, from = ?self.notify_bar, to = ?decoded, "queue notifications follow BAR 0");
        self.notify_bar = decoded;
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Point each interrupt at its MSI-X vector. The configuration-change interrupt may be
    /// pending while the ISR has its bit, a queue's while the device serves the queue; the
    /// wiring sends a pending one when its vector is unmasked ([`kvm_wiring`]).
    fn update_routes(&self) {
        let config = InterruptSource {
            vector: self.msix_config,
            may_be_pending: self.isr & ISR_CONFIG != 0,
        };
        let queues: Vec<InterruptSource> = self
            .queues
            .iter()
            .map(|q| InterruptSource {
                vector: q.vector,
                may_be_pending: self.activated && q.enabled,
            })
            .collect();
        self.wiring.update_routes(&self.msix, config, &queues);
    }

    /// The device status byte as the guest sees it.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Tell the driver the device needs a reset (e.g. its backend went away).
    pub fn needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        self.config_changed();
    }

    /// The device's configuration changed (e.g. its backend resized the disk): interrupt the
    /// driver so that it rereads it.
    pub fn config_changed_by_device(&mut self) {
        self.config_changed();
    }

    fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.isr |= ISR_CONFIG;
        self.wiring.raise_config_interrupt();
    }

    /// The guest ejected the device (hot unplug): stop it (its backend gives back the rings)
    /// and give back every KVM resource its wiring holds.
    pub fn unplug(&mut self) {
        self.reset("unplug");
        self.wiring.teardown();
        self.notify_bar = None;
    }

    /// Reset the transport and stop the device; `cause` is for the log.
    fn reset(&mut self, cause: &str) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.msix_config = NO_VECTOR;
        self.queue_select = 0;
        self.status = 0;
        self.isr = 0;
        for q in &mut self.queues {
            *q = Queue::new(q.max);
        }
        self.update_routes();
        let c = &self.counters;
        tracing::info!(
            device = %self.name,
            bar_exits = c.bar_exits.load(Ordering::Relaxed),
            notify_exits = c.notify_exits.load(Ordering::Relaxed),
            config_reads = c.config_reads.load(Ordering::Relaxed),
            activations = c.activations.load(Ordering::Relaxed),
            "device reset by the {cause}"
        );
    }

    /// The driver wrote the device status: 0 resets, FEATURES_OK is refused for features the
    /// device did not offer, DRIVER_OK activates the device if FEATURES_OK stuck.
    /// DEVICE_NEEDS_RESET stays set.
    fn set_status(&mut self, v: u8) {
        if v == 0 {
            self.reset("driver");
            return;
        }
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0 && self.driver_features & !self.features != 0 {
            tracing::warn!(device = %self.name, "driver accepted features the device did not offer");
            v &= !STATUS_FEATURES_OK;
        }
        let newly_ok = v & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        self.status = v | (self.status & STATUS_DEVICE_NEEDS_RESET);
        if newly_ok && v & STATUS_FEATURES_OK == 0 {
            // a modern device runs only with features the device accepted (virtio 1.2, 3.1.1)
            tracing::warn!(device = %self.name, "DRIVER_OK without FEATURES_OK: the device is not started");
        } else if newly_ok && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let setups = restore::queue_setups(&self.queues, &*self.wiring);
        let n = setups.len();
        match self.device.activate(self.driver_features, &setups) {
            Ok(()) => {
                self.activated = true;
                self.counters.activations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(device = %self.name, queues = n, "device activated");
            }
            Err(e) => {
                tracing::error!(device = %self.name, error = %e, "cannot activate the device");
                self.needs_reset();
            }
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bars(&self) -> Vec<(usize, u64)> {
        vec![(0, BAR_SIZE)]
    }

    fn power_on_reset(&mut self) {
        // a device whose backend is gone still needs a reset after the reboot
        let broken = self.status & STATUS_DEVICE_NEEDS_RESET;
        self.reset("guest reboot");
        self.config = self.power_on_config.clone();
        self.follow_bar();
        self.msix = Msix::new(self.queues.len() as u16 + 1);
        self.update_routes();
        self.status = broken;
    }

    fn config_written(&mut self, offset: usize) {
        if (self.msix_cap..self.msix_cap + super::msix::CAP_LEN).contains(&offset) {
            let control = (self.config.read(self.msix_cap) >> 16) as u16;
            self.msix.set_control(control);
            self.update_routes();
        }
        // the command register (memory decoding) or BAR 0 may have changed
        self.follow_bar();
    }

    fn bar_read(&mut self, _bar: usize, off: u64, data: &mut [u8]) {
        self.counters.bar_exits.fetch_add(1, Ordering::Relaxed);
        data.fill(0);
        match off {
            COMMON..COMMON_LEN => self.common_read_bytes(off, data),
            ISR => {
                data[0] = self.isr;
                self.isr = 0; // reading ISR acknowledges it
            }
            DEVICE_CFG..NOTIFY => {
                self.counters.config_reads.fetch_add(1, Ordering::Relaxed);
                self.device.read_config(off - DEVICE_CFG, data);
            }
            MSIX_TABLE..MSIX_PBA => self.msix.read_table(off - MSIX_TABLE, data),
            _ => {} // notify area and PBA read as zero
        }
    }

    fn bar_write(&mut self, _bar: usize, off: u64, data: &[u8]) {
        self.counters.bar_exits.fetch_add(1, Ordering::Relaxed);
        match off {
            COMMON..COMMON_LEN => self.common_write_bytes(off, data),
            DEVICE_CFG..NOTIFY => self.device.write_config(off - DEVICE_CFG, data),
            NOTIFY..MSIX_TABLE => {
                // only reached if the ioeventfd did not catch the write
                self.counters.notify_exits.fetch_add(1, Ordering::Relaxed);
                let q = ((off - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                self.wiring.notify(q);
            }
            MSIX_TABLE..MSIX_PBA if off - MSIX_TABLE < self.msix.table_len() => {
                self.msix.write_table(off - MSIX_TABLE, data);
                self.update_routes();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::test_utils::{driver_sets_up, test_transport, wired_transport, write_common};
    use super::*;
    use crate::pci::bus::{PciBus, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT};

    #[test]
    fn transport_does_not_offer_what_it_does_not_implement() {
        let (mut t, _, _) = test_transport(&[8]);
        write_common(&mut t, 0x00, 4, 1);
        let mut d = [0u8; 4];
        t.bar_read(0, COMMON + 0x04, &mut d);
        assert_eq!(
            u32::from_le_bytes(d),
            1,
            "VERSION_1 only, no ACCESS_PLATFORM or RING_PACKED"
        );
        t.bar_read(0, COMMON + 0x12, &mut d[..2]);
        assert_eq!(u16::from_le_bytes([d[0], d[1]]), 1, "num_queues");
    }

    #[test]
    fn interrupts_may_be_pending_only_once_signalled() {
        let (mut t, activations, updates) = test_transport(&[8, 8]);
        driver_sets_up(&mut t);
        assert_eq!(activations.lock().unwrap().as_slice(), &[vec![0]]);
        // an MSI-X table write re-routes: queue 0 runs, queue 1 does not, no config change
        t.bar_write(0, MSIX_TABLE + 44, &0u32.to_le_bytes());
        let (config, queues) = updates.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            config,
            InterruptSource {
                vector: 0,
                may_be_pending: false
            }
        );
        assert_eq!(
            queues,
            vec![
                InterruptSource {
                    vector: 1,
                    may_be_pending: true
                },
                InterruptSource {
                    vector: NO_VECTOR,
                    may_be_pending: false
                },
            ]
        );
        // a configuration change is pending until the driver reads the ISR
        t.config_changed_by_device();
        t.bar_write(0, MSIX_TABLE + 44, &0u32.to_le_bytes());
        assert!(updates.lock().unwrap().last().unwrap().0.may_be_pending);
        let mut isr = [0u8];
        t.bar_read(0, ISR, &mut isr);
        assert_eq!(isr, [ISR_CONFIG]);
        t.bar_write(0, MSIX_TABLE + 44, &0u32.to_le_bytes());
        assert!(!updates.lock().unwrap().last().unwrap().0.may_be_pending);
    }

    #[test]
    fn moving_the_bar_moves_the_notifications() {
        let (mut t, _, _, notify) = wired_transport(&[8, 8]);
        driver_sets_up(&mut t);
        let at = |bar: u64| vec![Some(bar + NOTIFY), Some(bar + NOTIFY + 4)];
        assert_eq!(*notify.lock().unwrap(), at(0xe000_0000));
        // the guest writes config space through the bus, as a vCPU does
        let t = Arc::new(Mutex::new(t));
        let bus = PciBus::new();
        let slot = bus.add(t.clone()).unwrap() as u32;
        let config_write = |reg: u32, value: u32| {
            let address = 1 << 31 | slot << 11 | reg;
            bus.pio_write(CONFIG_ADDRESS_PORT, &address.to_le_bytes());
            bus.pio_write(CONFIG_DATA_PORT, &value.to_le_bytes());
        };
        // BAR 0 is 64-bit: its low dword, then its high dword
        config_write(0x10, 0xd000_0000);
        assert_eq!(*notify.lock().unwrap(), at(0xd000_0000), "BAR moved");
        config_write(0x14, 1);
        assert_eq!(
            *notify.lock().unwrap(),
            at(0x1_d000_0000),
            "BAR moved above 4 GiB"
        );
        // memory decoding off: the BAR decodes nothing, so no ioeventfd either
        config_write(0x04, 0x04);
        assert_eq!(*notify.lock().unwrap(), vec![None, None], "decoding off");
        // sizing with decoding off, then back
        config_write(0x10, 0xffff_ffff);
        config_write(0x10, 0xc000_0000);
        assert_eq!(
            *notify.lock().unwrap(),
            vec![None, None],
            "decoding still off"
        );
        config_write(0x04, 0x06);
        assert_eq!(*notify.lock().unwrap(), at(0x1_c000_0000), "decoding on");
        // a BAR whose end wraps past 2^64 decodes nothing
        config_write(0x14, 0xffff_ffff);
        config_write(0x10, 0xffff_0000);
        assert_eq!(*notify.lock().unwrap(), vec![None, None], "BAR wraps");
        config_write(0x14, 0);
        config_write(0x10, 0xe000_0000);
        assert_eq!(*notify.lock().unwrap(), at(0xe000_0000));
        // a reboot puts the BAR back, memory decoding off
        t.lock().unwrap().power_on_reset();
        assert_eq!(
            *notify.lock().unwrap(),
            vec![None, None],
            "after the reboot"
        );
        config_write(0x04, 0x06);
        assert_eq!(*notify.lock().unwrap(), at(0xe000_0000));
    }

    #[test]
    fn the_most_queues_a_config_allows_fit_the_msix_table() {
        use crate::config::MAX_QUEUE_UNITS;
        use crate::virtio::device_type::QueueUnits;
        let vectors = (MSIX_PBA - MSIX_TABLE) / 16;
        for id in [TYPE_NET, TYPE_BLOCK, TYPE_BALLOON, 26] {
            let kind = DeviceType::of(id);
            let queues = kind.expected_backend_queue_count(QueueUnits(MAX_QUEUE_UNITS), u64::MAX);
            let needed = queues as u64 + 1; // and the configuration-change vector
            assert!(
                needed <= vectors,
                "{}: {needed} MSI-X vectors needed, {vectors} fit the BAR",
                kind.name
            );
        }
    }
}
