//! A backend's share of a live migration's dirty-page log (VHOST_USER_PROTOCOL_F_LOG_SHMFD
//! with VHOST_F_LOG_ALL): the vmm hands every backend the same log file (one bit per 4 KiB
//! guest page, by guest physical address) with SET_LOG_BASE, and the backend sets the bit of
//! every page it writes. The backend answers SET_LOG_BASE once it logs into the new file, so
//! a log taken away with a later SET_LOG_BASE holds every write made before the answer.

use std::fs::File;
use std::os::fd::AsRawFd;

use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost::{VhostBackend, VhostUserDirtyLogRegion};

use super::{protocol_err, FrontendError, VhostUserDevice, F_LOG_ALL};

impl VhostUserDevice {
    /// Whether the backend can log its writes to guest memory.
    pub fn can_log(&self) -> bool {
        self.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD)
            && self.backend_features & F_LOG_ALL != 0
    }

    /// The features SET_FEATURES sends: the acked ones, with LOG_ALL while logging.
    pub(super) fn features_to_send(&self) -> u64 {
        if self.logging {
            self.acked_features | F_LOG_ALL
        } else {
            self.acked_features
        }
    }

    /// Log into `log` (`size` bytes) from now on: SET_LOG_BASE (answered once the backend
    /// has switched), and the first time SET_FEATURES with LOG_ALL.
    pub fn set_log(&mut self, log: &File, size: u64) -> Result<(), FrontendError> {
        let (name, socket) = (self.name.clone(), self.socket.clone());
        let _deadline = self.deadline();
        let region = VhostUserDirtyLogRegion {
            mmap_size: size,
            mmap_offset: 0,
            mmap_handle: log.as_raw_fd(),
        };
        self.frontend
            .set_log_base(0, Some(region))
            .map_err(protocol_err(&name, &socket, "SET_LOG_BASE"))?;
        self.log = log.try_clone().ok().map(|f| (f, size));
        if !self.logging {
            self.logging = true;
            self.frontend
                .set_features(self.features_to_send())
                .map_err(protocol_err(&name, &socket, "SET_FEATURES"))?;
        }
        Ok(())
    }

    /// After a new memory table (a re-activation during a migration): vhost-user-backend's
    /// new regions carry no log, so the current one is handed over again (the caller's
    /// deadline covers it).
    pub(super) fn resend_log(&mut self) -> Result<(), FrontendError> {
        let Some((log, size)) = self.log.as_ref().filter(|_| self.logging) else {
            return Ok(());
        };
        let region = VhostUserDirtyLogRegion {
            mmap_size: *size,
            mmap_offset: 0,
            mmap_handle: log.as_raw_fd(),
        };
        let (name, socket) = (self.name.clone(), self.socket.clone());
        self.frontend
            .set_log_base(0, Some(region))
            .map_err(protocol_err(&name, &socket, "SET_LOG_BASE"))
    }

    /// Stop logging: SET_FEATURES without LOG_ALL. (vhost-user-backend keeps writing bits
    /// into the last log it was given, which nothing reads any more.)
    pub fn stop_log(&mut self) {
        if !self.logging {
            return;
        }
        self.logging = false;
        self.log = None;
        if !self.link.is_up() {
            return;
        }
        let _deadline = self.deadline();
        if let Err(e) = self.frontend.set_features(self.features_to_send()) {
            tracing::warn!(device = %self.name, error = %e, "cannot switch the backend's dirty log off");
        }
    }
}
