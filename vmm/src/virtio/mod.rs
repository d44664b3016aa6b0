//! Virtio devices as the vmm sees them: a transport ([`pci`]) in front of a device whose
//! queues are served elsewhere (a vhost-user backend process). The vmm only knows a device's
//! type ([`device_type`]), queue sizes, features and config space; it never touches the rings.

pub mod absent_device;
pub mod device_type;
pub mod msix;
pub mod pci;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

pub use device_type::{TYPE_BALLOON, TYPE_BLOCK, TYPE_NET};

use crate::vhost_user::persist::VhostUserState;

pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

pub const F_VERSION_1: u64 = 1 << 32;
/// Transport features the vmm's transport does not implement: ACCESS_PLATFORM (33),
/// RING_PACKED (34: a ring's position is read from the split layout when a backend is
/// reconnected or stopped), SR_IOV (37), NOTIFICATION_DATA (38), NOTIF_CONFIG_DATA (39),
/// RING_RESET (40). A backend offering them does not get them passed to the guest.
pub const F_TRANSPORT_UNSUPPORTED: u64 =
    (1 << 33) | (1 << 34) | (1 << 37) | (1 << 38) | (1 << 39) | (1 << 40);

/// One virtqueue as the driver set it up.
pub struct QueueSetup<'a> {
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub kick: &'a EventFd,
    pub call: &'a EventFd,
}

/// What a snapshot keeps of the device behind a transport (the transport's own registers are
/// in [`pci::persist::VirtioPciState`], which holds this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// A device served by a vhost-user backend: what the vmm knows of it.
    VhostUser(VhostUserState),
    /// No backend was reachable at start ([`absent_device::AbsentDevice`]): nothing to keep.
    Absent,
}

/// The device behind a virtio transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Features offered to the driver.
    fn features(&self) -> u64;
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start serving `queues` with `features`.
    fn activate(&mut self, features: u64, queues: &[QueueSetup]) -> Result<(), String>;
    /// The driver reset the device: stop every queue.
    fn reset(&mut self);
    /// The device's state as it is now (captured only; restoring is the snapshot's work).
    fn state(&self) -> VirtioDeviceState;
    /// Stop the queues where they are, for a snapshot (guest memory no longer changes).
    fn suspend(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Start the queues a [`VirtioDevice::suspend`] stopped, where they stopped.
    fn resume(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// A restored VM's device that its driver had started: start `queues` where `state`
    /// (the snapshot's) says they stopped.
    fn restore_activated(
        &mut self,
        _state: &VirtioDeviceState,
        features: u64,
        queues: &[QueueSetup],
    ) -> Result<(), String> {
        self.activate(features, queues)
    }
}
