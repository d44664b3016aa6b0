//! The virtio-pci modern transport (virtio 1.x, section 4.1): one 64-bit BAR holding the common
//! configuration, ISR, device configuration, notification area and the MSI-X table.
//!
//! The data path never comes here: every queue's notification address is a KVM ioeventfd and
//! every queue's interrupt a KVM irqfd routed to its MSI-X vector, and both eventfds are handed
//! to the device (a vhost-user backend) on DRIVER_OK.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

use super::msix::{Msix, NO_VECTOR};
use super::*;
use crate::irq_routing::IrqRouter;
use crate::pci::config::{ConfigSpace, Header};
use crate::pci::PciDevice;

pub const BAR_SIZE: u64 = 0x1_0000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x8000;
const MSIX_PBA: u64 = 0x9000;

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
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM: cannot register {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
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

struct Queue {
    max: u16,
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
    kick: EventFd,
    call: EventFd,
    gsi: u32,
}

pub struct VirtioPciDevice {
    name: String,
    config: ConfigSpace,
    /// `config` as it was at power-on (BARs, capabilities), restored when the machine resets.
    power_on_config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    router: Arc<IrqRouter>,
    msix: Msix,
    msix_cap: usize,
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
    config_evt: EventFd,
    config_gsi: u32,
    activated: bool,
    counters: Arc<Counters>,
}

fn class_of(device_type: u32) -> u32 {
    match device_type {
        TYPE_NET => 0x02_00_00,
        TYPE_BLOCK => 0x01_80_00,
        _ => 0xff_00_00,
    }
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
        let device_type = device.device_type();
        let mut config = ConfigSpace::new(&Header {
            vendor: VIRTIO_VENDOR,
            device: VIRTIO_MODERN_DEVICE_BASE + device_type as u16,
            class: class_of(device_type),
            revision: 1,
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x40,
        });
        config.add_bar64(0, bar_addr, BAR_SIZE)?;
        config.add_capability(&virtio_cap(CFG_COMMON, COMMON, COMMON_LEN, None), &[])?;
        let max_sizes = device.queue_max_sizes();
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

        let kvm = |what| move |source| TransportError::Kvm { what, source };
        let mut queues = Vec::new();
        for (i, max) in max_sizes.iter().enumerate() {
            let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?;
            let call = EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?;
            let addr = bar_addr + NOTIFY + i as u64 * u64::from(NOTIFY_MULTIPLIER);
            router
                .vm()
                .register_ioevent(&kick, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(kvm("a queue notification ioeventfd"))?;
            let gsi = router.allocate();
            router
                .vm()
                .register_irqfd(&call, gsi)
                .map_err(kvm("a queue interrupt irqfd"))?;
            queues.push(Queue {
                max: *max,
                size: *max,
                vector: NO_VECTOR,
                enabled: false,
                desc: 0,
                avail: 0,
                used: 0,
                kick,
                call,
                gsi,
            });
        }
        let config_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?;
        let config_gsi = router.allocate();
        router
            .vm()
            .register_irqfd(&config_evt, config_gsi)
            .map_err(kvm("the config-change irqfd"))?;
        let features = device.features() & !F_TRANSPORT_UNSUPPORTED;
        Ok(VirtioPciDevice {
            name: name.to_string(),
            power_on_config: config.clone(),
            config,
            device,
            router,
            msix,
            msix_cap,
            features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues,
            isr: 0,
            config_evt,
            config_gsi,
            activated: false,
            counters: Arc::new(Counters::default()),
        })
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Point each interrupt's GSI at its MSI-X vector (no route while masked). KVM drops an
    /// irqfd signal that has no route, so the vmm cannot latch it in the PBA; instead, when a
    /// vector is unmasked, its interrupt is sent once, as if it had been pending. A virtio
    /// driver takes an interrupt with no new used buffers as a no-op.
    fn update_routes(&self) {
        let route = |gsi: u32, vector: u16| {
            let msg = (vector != NO_VECTOR)
                .then(|| self.msix.message(vector))
                .flatten();
            match self.router.set(gsi, msg) {
                Ok(unmasked) => unmasked,
                Err(e) => {
                    tracing::error!(device = %self.name, error = %e, "cannot route an interrupt");
                    false
                }
            }
        };
        if route(self.config_gsi, self.msix_config) && self.isr & ISR_CONFIG != 0 {
            let _ = self.config_evt.write(1);
        }
        for q in &self.queues {
            if route(q.gsi, q.vector) && self.activated && q.enabled {
                let _ = q.call.write(1);
            }
        }
    }

    /// Tell the driver the device needs a reset (e.g. its backend went away).
    /// The device status byte as the guest sees it.
    pub fn status(&self) -> u8 {
        self.status
    }

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
        let _ = self.config_evt.write(1);
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
            q.size = q.max;
            q.vector = NO_VECTOR;
            q.enabled = false;
            q.desc = 0;
            q.avail = 0;
            q.used = 0;
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
        if newly_ok && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let setups: Vec<QueueSetup> = self
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.enabled)
            .map(|(index, q)| QueueSetup {
                index,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                kick: &q.kick,
                call: &q.call,
            })
            .collect();
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

    fn common_read(&mut self, off: u64) -> u32 {
        let half = |v: u64, hi: bool| if hi { (v >> 32) as u32 } else { v as u32 };
        let q = self.queues.get(usize::from(self.queue_select));
        match off {
            0x00 => self.device_feature_select,
            0x04 => match self.device_feature_select {
                0 | 1 => half(self.features, self.device_feature_select == 1),
                _ => 0,
            },
            0x08 => self.driver_feature_select,
            0x0c => match self.driver_feature_select {
                0 | 1 => half(self.driver_features, self.driver_feature_select == 1),
                _ => 0,
            },
            0x10 => u32::from(self.msix_config),
            0x12 => self.queues.len() as u32,
            0x14 => u32::from(self.status),
            0x15 => u32::from(self.config_generation),
            0x16 => u32::from(self.queue_select),
            0x18 => q.map_or(0, |q| u32::from(q.size)),
            0x1a => q.map_or(u32::from(NO_VECTOR), |q| u32::from(q.vector)),
            0x1c => q.map_or(0, |q| u32::from(q.enabled)),
            0x1e => u32::from(self.queue_select),
            0x20 | 0x24 => q.map_or(0, |q| half(q.desc, off == 0x24)),
            0x28 | 0x2c => q.map_or(0, |q| half(q.avail, off == 0x2c)),
            0x30 | 0x34 => q.map_or(0, |q| half(q.used, off == 0x34)),
            _ => 0,
        }
    }

    fn common_write(&mut self, off: u64, v: u32) {
        let set_half = |field: &mut u64, hi: bool| {
            *field = if hi {
                (*field & 0xffff_ffff) | (u64::from(v) << 32)
            } else {
                (*field & !0xffff_ffff) | u64::from(v)
            }
        };
        let writable = self.status & STATUS_DRIVER_OK == 0;
        match off {
            0x00 => self.device_feature_select = v,
            0x08 => self.driver_feature_select = v,
            0x0c if self.driver_feature_select < 2 => {
                let hi = self.driver_feature_select == 1;
                set_half(&mut self.driver_features, hi);
            }
            0x10 => {
                self.msix_config = v as u16;
                self.update_routes();
            }
            0x14 => self.set_status(v as u8),
            0x16 => self.queue_select = v as u16,
            0x18 if writable => {
                if let Some(q) = self.selected() {
                    q.size = (v as u16).min(q.max);
                }
            }
            0x1a => {
                let vectors = self.queues.len() as u16 + 1;
                if let Some(q) = self.selected() {
                    q.vector = if (v as u16) < vectors {
                        v as u16
                    } else {
                        NO_VECTOR
                    };
                }
                self.update_routes();
            }
            0x1c if writable => {
                if let Some(q) = self.selected() {
                    q.enabled = v == 1;
                }
            }
            0x20..=0x34 if writable => {
                if let Some(q) = self.selected() {
                    let field = match off & !4 {
                        0x20 => &mut q.desc,
                        0x28 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    set_half(field, off & 4 != 0);
                }
            }
            _ => {}
        }
    }
}

fn to_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
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
    }

    fn bar_read(&mut self, _bar: usize, off: u64, data: &mut [u8]) {
        self.counters.bar_exits.fetch_add(1, Ordering::Relaxed);
        data.fill(0);
        match off {
            COMMON..COMMON_LEN => {
                let v = self.common_read(off).to_le_bytes();
                let n = data.len().min(4);
                data[..n].copy_from_slice(&v[..n]);
            }
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
            COMMON..COMMON_LEN => self.common_write(off, to_u32(data)),
            DEVICE_CFG..NOTIFY => self.device.write_config(off - DEVICE_CFG, data),
            NOTIFY..MSIX_TABLE => {
                // only reached if the ioeventfd did not catch the write
                self.counters.notify_exits.fetch_add(1, Ordering::Relaxed);
                let q = ((off - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(q) = self.queues.get(q) {
                    let _ = q.kick.write(1);
                }
            }
            MSIX_TABLE..MSIX_PBA if off - MSIX_TABLE < self.msix.table_len() => {
                self.msix.write_table(off - MSIX_TABLE, data);
                self.update_routes();
            }
            _ => {}
        }
    }
}
