//! What a snapshot keeps of a vhost-user device, as far as the vmm knows it: what was
//! negotiated with the backend and where each ring was started and stopped. The device's own
//! state (a disk's in-flight requests, a balloon's pages) is the backend's, defined in its
//! crate, not guessed here.
//!
//! [`VhostUserDevice::vhost_user_state`] captures it from the live device. Restoring it is not
//! done here: the snapshot work will, checking `version` against [`VhostUserState::VERSION`]
//! first and asking the backend for GET_PROTOCOL_FEATURES before SET_PROTOCOL_FEATURES.

use serde::{Deserialize, Serialize};

use super::VhostUserDevice;

/// The frontend's side of one vhost-user connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserState {
    /// [`VhostUserState::VERSION`] when captured.
    pub version: u32,
    /// The virtio device ID.
    pub device_type: u32,
    /// What the backend offered in GET_FEATURES (VHOST_USER_F_PROTOCOL_FEATURES included).
    pub backend_features: u64,
    /// What the last SET_FEATURES acknowledged: the driver's features plus
    /// VHOST_USER_F_PROTOCOL_FEATURES when offered; 0 before the first activation.
    pub acked_features: u64,
    /// The protocol features set with SET_PROTOCOL_FEATURES.
    pub protocol_features: u64,
    /// The maximum size of each queue the transport offers; the length is the queue count.
    pub queue_max_sizes: Vec<u16>,
    /// Bytes of config space forwarded to the backend.
    pub config_size: u32,
    /// With CONFIGURE_MEM_SLOTS: whether ADD_MEM_REG sent the memory regions on this
    /// connection (a new connection sends them again).
    pub memory_regions_added: bool,
    /// The rings the last activation started, in the order it started them.
    pub vrings: Vec<VringState>,
    /// With INFLIGHT_SHMFD: whether the vmm holds the backend's in-flight region (from the
    /// activation's GET_INFLIGHT_FD until the driver's reset). Absent in older captures.
    #[serde(default)]
    pub inflight_tracking: bool,
    /// The device's config space as the guest last saw it (a restored balloon takes its
    /// target and size back from it). Absent in older captures.
    #[serde(default)]
    pub config_space: Vec<u8>,
    /// The backend's own state (DEVICE_STATE), taken with its rings stopped; `None` when it
    /// keeps none (or in older captures).
    #[serde(default)]
    pub device_state: Option<Vec<u8>>,
}

impl VhostUserState {
    pub const VERSION: u32 = 1;
}

/// One ring's progress as the vmm knows it (versioned with [`VhostUserState`]). While a ring
/// runs, only the backend knows how far it got; GET_VRING_BASE stops it and says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VringState {
    pub index: u32,
    pub size: u16,
    /// The available index SET_VRING_BASE started the ring at.
    pub start_base: u32,
    /// Started and not stopped since.
    pub running: bool,
    /// What GET_VRING_BASE returned when the vmm stopped the ring (the next available index
    /// the backend would have processed); `None` while it runs or if stopping it failed.
    pub stop_base: Option<u32>,
}

impl VhostUserDevice {
    /// The device's state as it is now.
    pub fn vhost_user_state(&self) -> VhostUserState {
        VhostUserState {
            version: VhostUserState::VERSION,
            device_type: self.device_type,
            backend_features: self.backend_features,
            acked_features: self.acked_features,
            protocol_features: self.protocol.bits(),
            queue_max_sizes: self.queue_sizes.clone(),
            config_size: self.config_size,
            memory_regions_added: self.regions_added,
            vrings: self.vrings.clone(),
            inflight_tracking: self.inflight_tracking(),
            config_space: self.config_cache.clone(),
            device_state: self.saved_state.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost_user::test_backend;
    use crate::virtio::device_type::QueueUnits;
    use crate::virtio::{VirtioDevice, VirtioDeviceState, F_VERSION_1, TYPE_BLOCK};

    const F_PROTOCOL_FEATURES: u64 = 1 << 30;
    const F_BLK_SIZE: u64 = 1 << 6;

    #[test]
    fn state_follows_negotiation_activation_and_reset() {
        let ram = test_backend::guest_ram();
        let backend =
            test_backend::start("persist", F_VERSION_1 | F_PROTOCOL_FEATURES | F_BLK_SIZE);
        let path = backend.path.clone();
        let mut dev = VhostUserDevice::connect(
            "blk0",
            &path,
            TYPE_BLOCK,
            QueueUnits(2),
            128,
            ram.memory().clone(),
        )
        .unwrap();
        let _ = std::fs::remove_file(&path);

        let s = dev.vhost_user_state();
        assert_eq!(s.version, VhostUserState::VERSION);
        assert_eq!(s.device_type, TYPE_BLOCK);
        assert_eq!(
            s.backend_features,
            F_VERSION_1 | F_PROTOCOL_FEATURES | F_BLK_SIZE
        );
        assert_eq!((s.acked_features, s.protocol_features), (0, 0));
        assert_eq!(s.queue_max_sizes, vec![128, 128], "two request queues");
        assert_eq!(s.config_size, 60);
        assert!(s.vrings.is_empty());

        let rings = test_backend::Rings::new();
        let setups = rings.setups();
        dev.activate(F_VERSION_1 | F_BLK_SIZE, &setups).unwrap();
        let s = dev.vhost_user_state();
        assert_eq!(
            s.acked_features,
            F_VERSION_1 | F_BLK_SIZE | F_PROTOCOL_FEATURES
        );
        let running = |index| VringState {
            index,
            size: 64,
            start_base: 0,
            running: true,
            stop_base: None,
        };
        assert_eq!(s.vrings, vec![running(0), running(1)]);

        dev.reset();
        let s = dev.vhost_user_state();
        let stopped = |index| VringState {
            running: false,
            stop_base: Some(100 + index),
            ..running(index)
        };
        assert_eq!(s.vrings, vec![stopped(0), stopped(1)]);
        assert_eq!(dev.state(), VirtioDeviceState::VhostUser(s.clone()));

        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<VhostUserState>(&json).unwrap(), s);
        drop(dev);
        backend.thread.join().unwrap();
    }
}
