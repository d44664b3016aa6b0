//! Everything the vmm knows about a virtio device type, in one table: its name, PCI class, what
//! one unit of the `queues=N` setting stands for, whose queue count wins, and the size of its
//! config space. The rest (features, the config space's contents, how the queues are served)
//! comes from the device's vhost-user backend.
//!
//! Queues, queue pairs and units: the `queues` setting of a device counts **units**
//! ([`QueueUnits`]). A unit is one request queue for blk, one rx/tx queue pair for net and the
//! inflate/deflate/statistics triple for the balloon; [`DeviceType::queues_per_unit`] turns
//! units into virtqueues ([`DeviceType::queue_count`]), the count the transport offers.

use api::config::MAX_QUEUE_UNITS;

/// Virtio device IDs (virtio 1.x, section 5) of the types the command line names.
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_BALLOON: u32 = 5;

/// VIRTIO_NET_F_CTRL_VQ: a net device's control queue, which comes after its queue pairs.
const F_NET_CTRL_VQ: u64 = 1 << 17;

/// The `queues` setting of a device (`queues=N` on the command line, `"queues": N` in the
/// config): a count of units, not of virtqueues (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueUnits(pub u16);

/// Whose queue count a device gets once its backend said how many queues it serves
/// (GET_QUEUE_NUM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueCountRule {
    /// The units asked for, capped at the backend's maximum: the guest uses as many queues as
    /// the transport offers (blk's request queues).
    Requested,
    /// The backend's count: the guest lays the queues out from what the backend's config
    /// space and features say (net: `max_virtqueue_pairs` and the control queue; balloon: the
    /// statistics and free page reporting queues), so the transport must offer exactly those.
    Backend,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceType {
    /// The virtio device ID.
    pub id: u32,
    /// Short name; a device is named after it (`blk0`, `net1` …).
    pub name: &'static str,
    /// What one unit of the `queues` setting is for this type.
    pub unit_name: &'static str,
    /// Virtqueues per unit.
    pub queues_per_unit: u16,
    /// A feature bit that, when the backend offers it, adds one queue after the units
    /// (net's control queue).
    pub extra_queue_feature: Option<u64>,
    pub queue_count_rule: QueueCountRule,
    /// The most virtqueues a backend of this type may serve; a backend reporting more is
    /// refused (each queue costs an MSI-X vector and a GSI of the VM's shared budget).
    pub max_queues: usize,
    /// Bytes of device-specific config space the vmm forwards to the backend (GET_CONFIG,
    /// SET_CONFIG); accesses beyond it read as zero.
    pub config_size: u32,
    /// PCI class code: `class << 16 | subclass << 8 | prog-if`.
    pub pci_class: u32,
}

const KNOWN: [DeviceType; 3] = [
    DeviceType {
        id: TYPE_NET,
        name: "net",
        unit_name: "queue pair",
        queues_per_unit: 2, // receive, transmit
        extra_queue_feature: Some(F_NET_CTRL_VQ),
        queue_count_rule: QueueCountRule::Backend,
        max_queues: 2 * MAX_QUEUE_UNITS as usize + 1, // the pairs and the control queue
        config_size: 12,                              // mac, status, max_virtqueue_pairs, mtu
        pci_class: 0x02_00_00,
    },
    DeviceType {
        id: TYPE_BLOCK,
        name: "blk",
        unit_name: "request queue",
        queues_per_unit: 1,
        extra_queue_feature: None,
        queue_count_rule: QueueCountRule::Requested,
        max_queues: MAX_QUEUE_UNITS as usize,
        config_size: 60, // struct virtio_blk_config
        pci_class: 0x01_80_00,
    },
    DeviceType {
        id: TYPE_BALLOON,
        name: "balloon",
        unit_name: "queue set (inflate, deflate, statistics)",
        queues_per_unit: 3,
        extra_queue_feature: None,
        queue_count_rule: QueueCountRule::Backend,
        // inflate, deflate, statistics, free page hinting, free page reporting
        max_queues: 5,
        config_size: 8, // num_pages, actual
        pci_class: 0xff_00_00,
    },
];

/// Any other virtio ID: one queue per unit, no config space the vmm forwards.
const OTHER: DeviceType = DeviceType {
    id: 0,
    name: "virtio",
    unit_name: "queue",
    queues_per_unit: 1,
    extra_queue_feature: None,
    queue_count_rule: QueueCountRule::Requested,
    max_queues: MAX_QUEUE_UNITS as usize,
    config_size: 0,
    pci_class: 0xff_00_00,
};

impl DeviceType {
    /// The row for virtio device ID `id` (a generic one for IDs the table does not list).
    pub fn of(id: u32) -> DeviceType {
        KNOWN
            .iter()
            .find(|t| t.id == id)
            .copied()
            .unwrap_or(DeviceType { id, ..OTHER })
    }

    /// The virtqueues `units` stand for (at least one unit).
    pub fn queue_count(&self, units: QueueUnits) -> usize {
        usize::from(units.0.max(1)) * usize::from(self.queues_per_unit)
    }

    /// The queue count a backend offering `features` is expected to report for `units`
    /// (the units' queues, plus the extra queue if its feature is offered).
    pub fn expected_backend_queue_count(&self, units: QueueUnits, features: u64) -> usize {
        let extra = self.extra_queue_feature.is_some_and(|f| features & f != 0);
        self.queue_count(units) + usize::from(extra)
    }

    /// The queue count the device gets for `units` from a backend serving at most
    /// `backend_max` queues.
    pub fn negotiated_queue_count(&self, units: QueueUnits, backend_max: usize) -> usize {
        match self.queue_count_rule {
            QueueCountRule::Requested => self.queue_count(units).min(backend_max),
            QueueCountRule::Backend => backend_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_become_queues_per_type() {
        let net = DeviceType::of(TYPE_NET);
        assert_eq!(net.queue_count(QueueUnits(2)), 4, "two rx/tx pairs");
        assert_eq!(
            net.expected_backend_queue_count(QueueUnits(2), F_NET_CTRL_VQ),
            5
        );
        assert_eq!(
            net.negotiated_queue_count(QueueUnits(1), 5),
            5,
            "the backend's count"
        );
        let blk = DeviceType::of(TYPE_BLOCK);
        assert_eq!(blk.queue_count(QueueUnits(0)), 1, "at least one unit");
        assert_eq!(
            blk.negotiated_queue_count(QueueUnits(8), 4),
            4,
            "capped by the backend"
        );
        assert_eq!(blk.negotiated_queue_count(QueueUnits(2), 4), 2);
        let balloon = DeviceType::of(TYPE_BALLOON);
        assert_eq!(balloon.queue_count(QueueUnits(1)), 3);
        assert_eq!((balloon.config_size, balloon.name), (8, "balloon"));
    }

    #[test]
    fn unknown_ids_get_the_generic_row() {
        let fs = DeviceType::of(26);
        assert_eq!((fs.id, fs.name, fs.config_size), (26, "virtio", 0));
        assert_eq!(fs.queue_count(QueueUnits(3)), 3);
        assert_eq!(fs.pci_class, 0xff_00_00);
    }
}
