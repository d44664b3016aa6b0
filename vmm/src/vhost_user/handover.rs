//! Handing a backend over to a migration's destination. A backend serves one frontend at a
//! time, so the source lets go of it ([`VhostUserDevice::release`]: the rings were stopped
//! by a suspend, the connection is closed, the reconnect thread waits) before the
//! destination connects; if the migration fails after that, [`VhostUserDevice::reclaim`]
//! lets the reconnect thread connect again, and the suspended rings start where they
//! stopped once the device is resumed.

use std::time::Duration;

use super::VhostUserDevice;

/// How often a reconnect thread looks whether its released device was reclaimed.
pub(super) const RECLAIM_POLL: Duration = Duration::from_millis(20);

impl VhostUserDevice {
    /// Let go of the backend (the device must be suspended: its rings are stopped).
    pub fn release(&mut self) {
        self.released = true;
        if self.link.is_up() {
            self.close_connection();
        }
    }

    /// Take the backend back after a failed migration: the reconnect thread connects again.
    pub fn reclaim(&mut self) {
        self.released = false;
    }

    pub fn is_released(&self) -> bool {
        self.released
    }

    /// The device left the VM (hot unplug): close the connection for good; the reconnect
    /// thread ends instead of connecting again.
    pub fn retire(&mut self) {
        self.retired = true;
        if self.link.is_up() {
            self.close_connection();
        }
    }

    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// The device's id (`blk0`, `net0` …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the backend is connected.
    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }
}
