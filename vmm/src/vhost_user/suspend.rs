//! Stopping a device's rings for a snapshot and starting them again where they stopped, on
//! the same connection: GET_VRING_BASE (the backend finishes what it has in flight and
//! reports where it stopped, so guest memory no longer changes under the snapshot), then
//! SET_VRING_BASE with those positions. Unlike a driver reset, nothing of the driver's
//! setup is forgotten.

use vhost::VhostBackend;
use vm_memory::GuestAddress;

use super::persist::{VhostUserState, VringState};
use super::{protocol_err, FrontendError, RingSetup, VhostUserDevice, F_PROTOCOL_FEATURES};
use crate::virtio::QueueSetup;

/// Where [`VhostUserDevice::start_rings`] starts each ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingBase {
    /// At 0: a fresh activation.
    Zero,
    /// Where the guest's used ring says the last backend got to: a new connection.
    UsedIndex,
    /// Where GET_VRING_BASE stopped it: after a suspend.
    Stopped,
}

impl VhostUserDevice {
    /// The used ring's index (the guest-visible count of completed buffers) of the ring whose
    /// used ring is at `used`.
    pub(super) fn used_index(&self, used: u64) -> Result<u16, FrontendError> {
        use vm_memory::{Address, Bytes};
        let addr = GuestAddress(used).checked_add(2);
        addr.and_then(|a| self.mem.read_obj::<u16>(a).ok())
            .map(u16::from_le)
            .ok_or_else(|| FrontendError::RingAddress {
                device: self.name.clone(),
                what: "used ring",
                gpa: used,
            })
    }

    /// Stop every running ring (GET_VRING_BASE), keeping where each stopped. A backend that
    /// is not connected cannot be stopped: the snapshot would not be consistent.
    pub fn suspend(&mut self) -> Result<(), FrontendError> {
        if !self.vrings.iter().any(|r| r.running) {
            self.suspended = true;
            return Ok(());
        }
        if !self.link.is_up() {
            return Err(FrontendError::Reconnect {
                device: self.name.clone(),
                socket: self.socket.clone(),
                what: "the backend is not connected, so its rings cannot be stopped".into(),
            });
        }
        let (name, socket) = (self.name.clone(), self.socket.clone());
        let _deadline = self.deadline();
        for ring in self.vrings.iter_mut().filter(|r| r.running) {
            let base = self
                .frontend
                .get_vring_base(ring.index as usize)
                .map_err(protocol_err(&name, &socket, "GET_VRING_BASE"))?;
            ring.stop_base = Some(base);
            ring.running = false;
        }
        tracing::info!(device = %self.name, rings = self.vrings.len(), "rings stopped");
        drop(_deadline);
        match self.save_device_state() {
            Ok(state) => {
                self.saved_state = state;
                self.suspended = true;
                Ok(())
            }
            Err(e) => {
                // not suspended after all: the rings run on
                let _ = self.resume_suspended();
                Err(e)
            }
        }
    }

    /// Start the rings a [`Self::suspend`] stopped, each where it stopped, and kick and call
    /// each once, as after a reconnect: a request the guest made meanwhile is seen, and a
    /// completion the stopped backend had not signalled is (with EVENT_IDX it would wait for
    /// a `used_event` the guest never moves).
    pub fn resume_suspended(&mut self) -> Result<(), FrontendError> {
        self.suspended = false;
        // nothing was suspended: no activation (or a driver reset forgot it), or running
        if self.ring_setups.is_empty() || self.vrings.iter().any(|r| r.running) {
            return Ok(());
        }
        self.start_rings(RingBase::Stopped)?;
        for r in &self.ring_setups {
            let _ = r.kick.write(1);
            let _ = r.call.write(1);
        }
        tracing::info!(device = %self.name, "rings started again");
        Ok(())
    }

    /// What activating does ([`super::VirtioDevice::activate`]), each ring started `from`
    /// where [`RingBase`] says: keep the driver's queue setup (for reconnects and resumes),
    /// then start the rings if the backend is there.
    pub(super) fn activate_from(
        &mut self,
        features: u64,
        queues: &[QueueSetup],
        from: RingBase,
    ) -> Result<(), String> {
        self.ring_setups.clear();
        for q in queues {
            let (kick, call) = match (q.kick.try_clone(), q.call.try_clone()) {
                (Ok(k), Ok(c)) => (k, c),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(format!("cannot keep a queue's eventfds: {e}"))
                }
            };
            self.ring_setups.push(RingSetup {
                index: q.index,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                kick,
                call,
            });
        }
        self.acked_features = features | (self.backend_features & F_PROTOCOL_FEATURES);
        if !self.link.is_up() {
            // started on the next connection (the guest sees a stall, not an error)
            tracing::info!(device = %self.name, "activation waits for the backend to come back");
            return Ok(());
        }
        match self.start_rings(from) {
            Ok(()) => Ok(()),
            // the backend failed or timed out: a new connection gets the rings
            Err(e @ FrontendError::Protocol { .. }) => {
                tracing::warn!(device = %self.name, error = %e, "activation waits for the backend to come back");
                self.close_connection();
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// A restored VM's device that its driver had started: the backend gets the state its
    /// predecessor saved (`device_state.rs`; a refusal fails the restore), the rings start
    /// where the snapshot's GET_VRING_BASE stopped them, and the backend is given the config space the
    /// guest saw (SET_CONFIG flagged LIVE_MIGRATION, as after a backend restart) if its own
    /// differs.
    pub fn restore_activation(
        &mut self,
        saved: &VhostUserState,
        features: u64,
        queues: &[QueueSetup],
    ) -> Result<(), String> {
        self.vrings = saved
            .vrings
            .iter()
            .map(|r| VringState {
                running: false,
                ..*r
            })
            .collect();
        if let (Some(state), true) = (&saved.device_state, self.link.is_up()) {
            self.load_device_state(state).map_err(|e| e.to_string())?;
        }
        self.activate_from(features, queues, RingBase::Stopped)?;
        let same_size = saved.config_space.len() == self.config_cache.len();
        if same_size && saved.config_space != self.config_cache && self.link.is_up() {
            self.config_cache = saved.config_space.clone();
            self.restore_config();
            let _ = self.refresh_config();
            if self.config_cache != saved.config_space {
                tracing::warn!(
                    device = %self.name,
                    "the backend's config space differs from the snapshot's (started with other \
                     options, e.g. another MAC?): the guest keeps what it read before"
                );
            }
        }
        Ok(())
    }
}
