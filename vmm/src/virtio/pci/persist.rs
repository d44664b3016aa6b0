//! What a snapshot keeps of a virtio-pci device: the transport's registers as the driver left
//! them, the PCI function's config space, the MSI-X table and mask state, and the state of the
//! device behind the transport ([`VirtioDeviceState`]).
//!
//! [`VirtioPciDevice::state`] captures it from the live transport. Restoring it is not done
//! here: the snapshot work will, checking `version` against [`VirtioPciState::VERSION`] first.
//! The eventfds, GSIs and KVM registrations are not state: a restore makes new ones.

use serde::{Deserialize, Serialize};

use super::VirtioPciDevice;
use crate::pci::config::CONFIG_SIZE;
use crate::virtio::msix::MsixState;
use crate::virtio::VirtioDeviceState;

/// A virtio-pci device (transport and device) as it is at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// [`VirtioPciState::VERSION`] when captured.
    pub version: u32,
    /// The virtio device ID.
    pub device_type: u32,
    /// The function's configuration space, 64 dwords: the command register (memory decoding,
    /// bus mastering), BAR 0's address, the MSI-X message control word.
    pub pci_config: Vec<u32>,
    /// The device status byte (virtio 1.x, 2.1), DEVICE_NEEDS_RESET included.
    pub status: u8,
    /// Features the transport offers the driver (the device's, less what it does not support).
    pub device_features: u64,
    pub device_feature_select: u32,
    /// Features the driver wrote.
    pub driver_features: u64,
    pub driver_feature_select: u32,
    /// The configuration-change interrupt's MSI-X vector (0xffff: none).
    pub config_msix_vector: u16,
    pub config_generation: u8,
    /// The interrupt status bits not yet read by the driver.
    pub isr: u8,
    pub queue_select: u16,
    /// Whether the device was activated (the driver set DRIVER_OK and the device accepted).
    pub activated: bool,
    pub queues: Vec<VirtqueueState>,
    pub msix: MsixState,
    /// The device behind the transport.
    pub device: VirtioDeviceState,
}

impl VirtioPciState {
    pub const VERSION: u32 = 1;
}

/// One virtqueue as the driver set it up (versioned with [`VirtioPciState`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtqueueState {
    /// The largest size the device offers.
    pub max_size: u16,
    pub size: u16,
    /// `queue_enable`.
    pub ready: bool,
    /// Guest-physical addresses of the descriptor table, available (driver) ring and used
    /// (device) ring.
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// The queue's MSI-X vector (0xffff: none).
    pub msix_vector: u16,
}

impl VirtioPciDevice {
    /// Stop the device's queues where they are (a snapshot is being taken).
    pub fn suspend_device(&mut self) -> Result<(), String> {
        self.device.suspend()
    }

    /// Start the queues [`Self::suspend_device`] stopped.
    pub fn resume_device(&mut self) -> Result<(), String> {
        self.device.resume()
    }

    /// The device's state as it is now.
    pub fn state(&self) -> VirtioPciState {
        VirtioPciState {
            version: VirtioPciState::VERSION,
            device_type: self.device.device_type(),
            pci_config: (0..CONFIG_SIZE)
                .step_by(4)
                .map(|offset| self.config.read(offset))
                .collect(),
            status: self.status,
            device_features: self.features,
            device_feature_select: self.device_feature_select,
            driver_features: self.driver_features,
            driver_feature_select: self.driver_feature_select,
            config_msix_vector: self.msix_config,
            config_generation: self.config_generation,
            isr: self.isr,
            queue_select: self.queue_select,
            activated: self.activated,
            queues: self
                .queues
                .iter()
                .map(|q| VirtqueueState {
                    max_size: q.max,
                    size: q.size,
                    ready: q.enabled,
                    desc_table: q.desc,
                    avail_ring: q.avail,
                    used_ring: q.used,
                    msix_vector: q.vector,
                })
                .collect(),
            msix: self.msix.state(),
            device: self.device.state(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::pci::test_utils::{driver_sets_up, test_transport, write_common};
    use crate::virtio::{STATUS_DRIVER_OK, STATUS_FEATURES_OK};

    #[test]
    fn state_is_what_the_driver_set_up() {
        let (mut transport, activations, _) = test_transport(&[256, 128]);
        driver_sets_up(&mut transport);
        let s = transport.state();
        assert_eq!(s.version, VirtioPciState::VERSION);
        assert_eq!(s.device_type, 2);
        assert_eq!(s.status & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
        assert_eq!(s.status & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
        assert_eq!(s.device_features, crate::virtio::F_VERSION_1 | 1 << 6);
        assert_eq!(s.driver_features, crate::virtio::F_VERSION_1);
        assert_eq!(s.config_msix_vector, 0);
        assert!(s.activated);
        assert_eq!(activations.lock().unwrap().as_slice(), &[vec![0]]);
        assert_eq!(
            s.queues,
            vec![
                VirtqueueState {
                    max_size: 256,
                    size: 64,
                    ready: true,
                    desc_table: 0x1_0000_1000,
                    avail_ring: 0x2000,
                    used_ring: 0x3000,
                    msix_vector: 1,
                },
                VirtqueueState {
                    max_size: 128,
                    size: 128,
                    ready: false,
                    desc_table: 0,
                    avail_ring: 0,
                    used_ring: 0,
                    msix_vector: 0xffff,
                },
            ]
        );
        assert_eq!(s.queue_select, 0);
        // three vectors (config + two queues); vector 1 was unmasked, MSI-X enabled
        assert_eq!(s.msix.entries.len(), 3);
        assert_eq!(s.msix.entries[1].address, 0xfee0_0000);
        assert_eq!(s.msix.entries[1].data, 0x41);
        assert_eq!(s.msix.entries[1].vector_control, 0);
        assert_eq!(s.msix.entries[2].vector_control, 1, "still masked");
        assert_eq!(s.msix.control & 0x8000, 0x8000);
        // the config space: vendor/device, memory decoding on, BAR 0 where it was put
        assert_eq!(s.pci_config.len(), 64);
        assert_eq!(s.pci_config[0], 0x1042_1af4);
        assert_eq!(s.pci_config[1] & 0x2, 0x2);
        assert_eq!(s.pci_config[4] & !0xf, 0xe000_0000);
        assert_eq!(s.device, VirtioDeviceState::Absent);

        // the config interrupt bumps the generation and sets the ISR bit, until read
        transport.config_changed_by_device();
        let s = transport.state();
        assert_eq!((s.config_generation, s.isr), (1, 2));

        // a driver reset clears the transport's registers
        write_common(&mut transport, 0x14, 1, 0);
        let s = transport.state();
        assert_eq!((s.status, s.driver_features, s.activated), (0, 0, false));
        assert_eq!(s.queues[0].size, 256);
        assert!(!s.queues[0].ready);
    }

    #[test]
    fn state_round_trips_through_serde() {
        let (mut transport, _, _) = test_transport(&[16]);
        driver_sets_up(&mut transport);
        let s = transport.state();
        let json = serde_json::to_string(&s).unwrap();
        let back: VirtioPciState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
