//! Putting a virtio-pci transport back as a snapshot had it (a restored VM, before any vCPU
//! runs): the config space as the guest left it (where BAR 0 is, memory decoding, MSI-X
//! enable), the MSI-X table, the common configuration registers and each queue; and, when
//! the driver had started the device, the device itself, its queues where they stopped.

use super::persist::VirtioPciState;
use super::{Queue, TransportWiring, VirtioPciDevice};
use crate::virtio::QueueSetup;

/// The enabled queues as the driver set them up, with their eventfds: what a device is
/// started with (at DRIVER_OK, or restored).
pub(super) fn queue_setups<'a>(
    queues: &[Queue],
    wiring: &'a dyn TransportWiring,
) -> Vec<QueueSetup<'a>> {
    queues
        .iter()
        .enumerate()
        .filter(|(_, q)| q.enabled)
        .filter_map(|(index, q)| {
            let (kick, call) = wiring.queue_eventfds(index)?;
            Some(QueueSetup {
                index,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                kick,
                call,
            })
        })
        .collect()
}

impl VirtioPciDevice {
    /// Restore `s` into this (new, never used) transport over the same kind of device.
    pub fn restore(&mut self, s: &VirtioPciState) -> Result<(), String> {
        if s.version > VirtioPciState::VERSION {
            return Err(format!(
                "its transport state has version {}; this splitvisor reads up to {}",
                s.version,
                VirtioPciState::VERSION
            ));
        }
        if s.device_type != self.device.device_type() || s.queues.len() != self.queues.len() {
            return Err(format!(
                "the snapshot's device is of type {} with {} queues, the backend's of type {} \
                 with {}",
                s.device_type,
                s.queues.len(),
                self.device.device_type(),
                self.queues.len()
            ));
        }
        if s.device_features & !self.features != 0 {
            return Err(format!(
                "the backend does not offer every feature the guest's driver saw \
                 ({:#x} missing)",
                s.device_features & !self.features
            ));
        }
        if s.pci_config.first() != Some(&self.config.read(0)) {
            return Err(
                "the snapshot's PCI vendor and device ids differ from this device's".into(),
            );
        }
        for (i, value) in s.pci_config.iter().enumerate() {
            self.config.write(i * 4, &value.to_le_bytes());
        }
        self.msix.restore(&s.msix)?;
        self.follow_bar();
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.msix_config = s.config_msix_vector;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.queue_select = s.queue_select;
        self.isr = s.isr;
        for (i, (q, saved)) in self.queues.iter_mut().zip(&s.queues).enumerate() {
            // what the guest's own writes could never have made (common_config.rs checks)
            let sane = saved.size.is_power_of_two() && saved.size <= q.max;
            if saved.ready && !sane {
                return Err(format!(
                    "queue {i}: size {} is not a queue size",
                    saved.size
                ));
            }
            *q = Queue {
                max: q.max,
                size: if sane { saved.size } else { q.max },
                vector: saved.msix_vector,
                enabled: saved.ready,
                desc: saved.desc_table,
                avail: saved.avail_ring,
                used: saved.used_ring,
            };
        }
        // the routes first: a started backend may interrupt at once (a packet waiting on a
        // tap), and an interrupt raised before its vector is routed is lost for good (with
        // EVENT_IDX the backend then waits for a used_event the guest never moves)
        self.update_routes();
        if s.activated {
            let setups = queue_setups(&self.queues, &*self.wiring);
            self.device
                .restore_activated(&s.device, self.driver_features, &setups)?;
            self.activated = true;
        }
        self.update_routes();
        Ok(())
    }

    /// One interrupt on every started queue, once a restored VM's interrupt controllers are
    /// in place (before its vCPUs run; earlier, the LAPIC state written over it would drop
    /// it). A backend stopped for the snapshot may have put
    /// buffers in a used ring without interrupting yet, and a new backend never interrupts for
    /// what its predecessor did; with EVENT_IDX it would then wait for a `used_event` the
    /// guest never moves. A virtio driver takes an interrupt with nothing new as a no-op.
    pub fn interrupt_started_queues(&self) {
        if !self.activated {
            return;
        }
        for (index, q) in self.queues.iter().enumerate() {
            if let (true, Some((_, call))) = (q.enabled, self.wiring.queue_eventfds(index)) {
                let _ = call.write(1);
            }
        }
    }
}
