//! Adding and removing virtio-pci devices while the guest runs (`vm.add-device`,
//! `vm.remove-device`), with ACPI PCI hotplug ([`crate::devices::pci_hotplug`]).
//!
//! Adding connects to the backend, builds the transport at its slot's BAR window
//! ([`crate::layout::bar_for_slot`]) with its ioeventfds, irqfds and GSIs, puts it on the
//! bus, starts its backend-request and reconnect threads, and tells the guest (the slot's
//! bit in PCIU, the GED's PCI event). Removing asks the guest to eject the slot (PCID, the
//! same event) and waits for its `_EJ0`; the device is then off the bus, and here it is
//! stopped (its rings given back by the backend: GET_VRING_BASE), its KVM resources are
//! given back, its connection closed and its threads end, so that nothing of it is left.
//!
//! Devices the VM booted with stay (removing one comes later), and a VM with devices added
//! is not snapshotted or migrated yet: its snapshot would not name them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use crate::api::server::ApiDevice;
use crate::config::DeviceConfig;
use crate::devices::ged::EVENT_PCI;
use crate::devices::Devices;
use crate::irq_routing::IrqRouter;
use crate::layout::bar_for_slot;
use crate::run_control::RunControl;
use crate::vcpu_hotplug::{VcpuHotplug, VcpuHotplugError};
use crate::vhost_user::reconnect::{self, SharedVhostUser};
use crate::vhost_user::VhostUserDevice;
use crate::virtio::device_type::QueueUnits;
use crate::virtio::pci::VirtioPciDevice;
use crate::virtio::TYPE_BALLOON;

/// Why a device could not be added or removed; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("invalid device {spec:?}: {why}")]
    BadDevice { spec: String, why: String },
    #[error("{0}")]
    Conflict(String),
    #[error("the VM has no device {id} that was added (devices added: {added})")]
    NotFound { id: String, added: String },
    #[error("device {id}: cannot connect to its backend: {why}")]
    Backend { id: String, why: String },
    #[error("device {id}: {why}")]
    Internal { id: String, why: String },
    #[error("the guest did not eject {id} within {}s (it stays; ask again to wait longer)", .timeout.as_secs())]
    NotEjected { id: String, timeout: Duration },
    #[error(transparent)]
    Vcpus(#[from] VcpuHotplugError),
}

/// A device added while the VM runs.
struct Added {
    api: Arc<ApiDevice>,
    slot: usize,
    vhost: Arc<Mutex<VhostUserDevice>>,
}

/// What `vm.add-device` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugged {
    pub id: String,
    pub slot: usize,
}

impl Plugged {
    /// The PCI address as `lspci` shows it.
    pub fn bdf(&self) -> String {
        format!("0000:00:{:02x}.0", self.slot)
    }
}

pub struct Hotplug {
    devices: Arc<Devices>,
    router: Arc<IrqRouter>,
    control: Arc<RunControl>,
    mem: GuestMemoryMmap,
    /// The ids of the devices the VM booted with.
    boot_ids: Vec<String>,
    added: Mutex<BTreeMap<String, Added>>,
    /// Its vCPUs (`vm.resize`).
    vcpus: Arc<VcpuHotplug>,
    /// One addition or removal at a time.
    busy: Mutex<()>,
}

impl Hotplug {
    /// GSIs handed out and MSI routes in KVM's table (the VM's, boot devices included).
    pub fn interrupts(&self) -> (usize, usize) {
        self.router.in_use()
    }

    pub fn new(
        devices: Arc<Devices>,
        router: Arc<IrqRouter>,
        control: Arc<RunControl>,
        mem: GuestMemoryMmap,
        boot_ids: Vec<String>,
        vcpus: Arc<VcpuHotplug>,
    ) -> Hotplug {
        Hotplug {
            devices,
            router,
            control,
            mem,
            boot_ids,
            added: Mutex::default(),
            vcpus,
            busy: Mutex::default(),
        }
    }

    fn added(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Added>> {
        self.added.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any device or vCPU was added (and is still there).
    pub fn has_added(&self) -> bool {
        !self.added().is_empty() || self.vcpus.has_added()
    }

    /// Add or remove vCPUs until the VM has `want`; the count it has.
    pub fn resize_vcpus(&self, want: u8, eject_wait: Duration) -> Result<u8, HotplugError> {
        let _op = self.exclusive()?;
        Ok(self.vcpus.resize(want, eject_wait)?)
    }

    /// The vCPUs the VM has now.
    pub fn vcpu_count(&self) -> u8 {
        self.vcpus.count()
    }

    /// The added devices, for `vm.info`.
    pub fn api_devices(&self) -> Vec<Arc<ApiDevice>> {
        self.added().values().map(|a| a.api.clone()).collect()
    }

    /// Hold off snapshots, migrations, pauses for the operation; one at a time.
    fn exclusive(&self) -> Result<Exclusive<'_>, HotplugError> {
        let busy = match self.busy.try_lock() {
            Ok(b) => b,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                let why = "another device is being added or removed";
                return Err(HotplugError::Conflict(why.into()));
            }
        };
        if self.control.paused() {
            let why = "the VM is paused: resume it first (the guest must see the slot change)";
            return Err(HotplugError::Conflict(why.into()));
        }
        self.control.begin_snapshot().map_err(|e| {
            HotplugError::Conflict(format!("the VM is busy ({e}): try again after it"))
        })?;
        Ok(Exclusive {
            control: &self.control,
            _busy: busy,
        })
    }

    /// A name for a device without an `id=`: its type's name and the lowest free number.
    fn pick_id(&self, cfg: &DeviceConfig) -> String {
        let taken =
            |id: &str| self.boot_ids.iter().any(|b| b == id) || self.added().contains_key(id);
        if let Some(id) = &cfg.id {
            return id.clone();
        }
        let kind = crate::config::type_name(cfg.virtio_type);
        (0..)
            .map(|n| format!("{kind}{n}"))
            .find(|id| !taken(id))
            .unwrap_or_default()
    }

    /// Add the device `spec` (as `--device` takes it) and tell the guest.
    pub fn add(&self, spec: &str) -> Result<Plugged, HotplugError> {
        let bad = |why: String| HotplugError::BadDevice {
            spec: spec.to_string(),
            why,
        };
        let cfg: DeviceConfig = spec.parse().map_err(|e| bad(crate::error_chain(&e)))?;
        if cfg.virtio_type == TYPE_BALLOON {
            return Err(bad("a balloon cannot be added while the VM runs".into()));
        }
        let _op = self.exclusive()?;
        let id = self.pick_id(&cfg);
        if self.boot_ids.contains(&id) || self.added().contains_key(&id) {
            return Err(HotplugError::Conflict(format!(
                "the VM has a device {id} already"
            )));
        }
        if self.devices.hotplug.pending() {
            let why = "the guest has not taken the last slot change yet: try again";
            return Err(HotplugError::Conflict(why.into()));
        }
        // free on the bus, and not a slot whose ejected device is still to be torn down
        let held: Vec<usize> = self.added().values().map(|a| a.slot).collect();
        let slot = self
            .devices
            .pci
            .free_slot_where(|s| !held.contains(&s))
            .ok_or_else(|| HotplugError::Conflict("every PCI slot is taken".into()))?;
        let internal = |why: String| HotplugError::Internal {
            id: id.clone(),
            why,
        };
        let mut vhost = VhostUserDevice::connect(
            &id,
            &cfg.socket,
            cfg.virtio_type,
            QueueUnits(cfg.queues),
            cfg.queue_size,
            self.mem.clone(),
        )
        .map_err(|e| HotplugError::Backend {
            id: id.clone(),
            why: crate::error_chain(&e),
        })?;
        let channel = vhost.take_backend_channel();
        let link = vhost.link_status();
        let vhost = Arc::new(Mutex::new(vhost));
        let backend = Box::new(SharedVhostUser(vhost.clone()));
        let transport = VirtioPciDevice::new(&id, backend, self.router.clone(), bar_for_slot(slot))
            .map_err(|e| internal(crate::error_chain(&e)))?;
        let (counters, status) = (transport.counters(), transport.status());
        let transport = Arc::new(Mutex::new(transport));
        if let Err(e) = self.devices.pci.add_at(slot, transport.clone()) {
            retire(&vhost, &transport);
            return Err(internal(e.to_string()));
        }
        let threads = channel
            .map(|c| c.spawn(transport.clone()))
            .unwrap_or(Ok(()))
            .and_then(|()| {
                reconnect::spawn(
                    id.clone(),
                    cfg.socket.clone(),
                    vhost.clone(),
                    transport.clone(),
                )
            });
        if let Err(e) = threads {
            self.devices.pci.remove(slot);
            retire(&vhost, &transport);
            return Err(internal(format!("cannot start its threads: {e}")));
        }
        let api = Arc::new(ApiDevice {
            name: id.clone(),
            cfg: DeviceConfig {
                id: Some(id.clone()),
                ..cfg
            },
            transport,
            link: Some(link),
            counters,
            last_status: std::sync::atomic::AtomicU8::new(status),
        });
        self.added().insert(id.clone(), Added { api, slot, vhost });
        self.devices.hotplug.announce_added(slot);
        if let Err(e) = self.devices.ged.notify(EVENT_PCI) {
            tracing::error!(device = %id, error = %e, "cannot raise the GED interrupt");
        }
        tracing::info!(device = %id, slot, bar = bar_for_slot(slot), "virtio-pci device added");
        Ok(Plugged { id, slot })
    }

    /// Ask the guest to eject device `id`, wait (up to `timeout`) for it to do so, then
    /// stop the device and give back everything it held.
    pub fn remove(&self, id: &str, timeout: Duration) -> Result<(), HotplugError> {
        let _op = self.exclusive()?;
        let slot = self.added().get(id).map(|a| a.slot);
        let slot = match slot {
            Some(slot) => slot,
            None if self.boot_ids.iter().any(|b| b == id) => {
                let why = format!(
                    "{id} is a device the VM booted with; only devices added while it runs can \
                     be removed (for now)"
                );
                return Err(HotplugError::Conflict(why));
            }
            None => {
                let added: Vec<String> = self.added().keys().cloned().collect();
                return Err(HotplugError::NotFound {
                    id: id.to_string(),
                    added: if added.is_empty() {
                        "none".into()
                    } else {
                        added.join(", ")
                    },
                });
            }
        };
        // (a guest that ejected it after an earlier request gave up waiting: nothing to ask)
        if !self.devices.hotplug.ejected(slot) {
            self.devices.hotplug.request_eject(slot);
            if let Err(e) = self.devices.ged.notify(EVENT_PCI) {
                tracing::error!(device = %id, error = %e, "cannot raise the GED interrupt");
            }
        }
        if !self.devices.hotplug.wait_ejected(slot, timeout) {
            return Err(HotplugError::NotEjected {
                id: id.to_string(),
                timeout,
            });
        }
        let Some(gone) = self.added().remove(id) else {
            return Ok(());
        };
        // off the bus already (the guest's eject); now stop it and give everything back
        retire(&gone.vhost, &gone.api.transport);
        tracing::info!(device = %id, slot, "virtio-pci device removed");
        Ok(())
    }
}

/// Stop the transport (the backend gives back the rings), give back its KVM resources, and
/// close the backend connection for good (its threads end).
fn retire(vhost: &Arc<Mutex<VhostUserDevice>>, transport: &Arc<Mutex<VirtioPciDevice>>) {
    transport.lock().unwrap_or_else(|e| e.into_inner()).unplug();
    vhost.lock().unwrap_or_else(|e| e.into_inner()).retire();
}

/// While held: no snapshot, migration or pause starts.
struct Exclusive<'a> {
    control: &'a RunControl,
    _busy: std::sync::MutexGuard<'a, ()>,
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.control.end_snapshot();
    }
}
