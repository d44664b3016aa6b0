//! The backend's own state in a snapshot (VHOST_USER_PROTOCOL_F_DEVICE_STATE): with the rings
//! stopped, SET_DEVICE_STATE_FD hands the backend one end of a pipe; the vmm reads the state
//! from the other (save) or writes the saved one into it (load), then CHECK_DEVICE_STATE asks
//! whether the backend took it. What the bytes say is the backend's (`backends::device_state`:
//! a versioned document naming its device); the vmm only carries them in the snapshot. A
//! backend without the feature (QEMU's own daemons) has nothing saved and is warned about.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection as Direction, VhostTransferStatePhase as Phase,
    VhostUserProtocolFeatures,
};
use vhost::vhost_user::Frontend;
use vhost::vhost_user::VhostUserFrontend;

use super::{protocol_err, FrontendError, VhostUserDevice};

/// The largest state taken from a backend (a balloon lists its pages; the rest are tiny).
const MAX_STATE: u64 = 64 << 20;
/// How long a backend may take to write or read its state.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

impl VhostUserDevice {
    fn offers_device_state(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::DEVICE_STATE)
    }

    fn transfer_err(&self, what: String) -> FrontendError {
        FrontendError::Reconnect {
            device: self.name.clone(),
            socket: self.socket.clone(),
            what,
        }
    }

    /// Take the stopped backend's state (`None`: it offers no DEVICE_STATE).
    pub(super) fn save_device_state(&mut self) -> Result<Option<Vec<u8>>, FrontendError> {
        if !self.offers_device_state() {
            tracing::warn!(device = %self.name, "the backend keeps no device state: only the rings are saved");
            return Ok(None);
        }
        let (name, socket) = (self.name.clone(), self.socket.clone());
        let (reader, writer) = pipe().map_err(|e| self.transfer_err(format!("no pipe: {e}")))?;
        let other = {
            let _deadline = self.deadline();
            self.frontend
                .set_device_state_fd(Direction::SAVE, Phase::STOPPED, writer)
                .map_err(protocol_err(&name, &socket, "SET_DEVICE_STATE_FD"))?
        };
        // the backend writes from a thread of its own and closes its end when done
        let from = other.unwrap_or(reader);
        let bytes = with_timeout(move || {
            let mut bytes = Vec::new();
            from.take(MAX_STATE + 1)
                .read_to_end(&mut bytes)
                .map(|_| bytes)
        })
        .map_err(|e| self.transfer_err(format!("reading its state: {e}")))?;
        if bytes.len() as u64 > MAX_STATE {
            return Err(self.transfer_err(format!("its state is larger than {MAX_STATE} bytes")));
        }
        self.check_device_state("saving")?;
        tracing::info!(device = %self.name, bytes = bytes.len(), "device state saved");
        Ok(Some(bytes))
    }

    /// Give a restored backend the state a snapshot took from its predecessor, before its
    /// rings start; the backend refusing it (another disk, another MAC) fails the restore.
    pub(super) fn load_device_state(&mut self, state: &[u8]) -> Result<(), FrontendError> {
        if !self.offers_device_state() {
            tracing::warn!(device = %self.name, "the backend takes no device state: the snapshot's is not given back");
            return Ok(());
        }
        let (name, socket) = (self.name.clone(), self.socket.clone());
        let (reader, writer) = pipe().map_err(|e| self.transfer_err(format!("no pipe: {e}")))?;
        let other = {
            let _deadline = self.deadline();
            self.frontend
                .set_device_state_fd(Direction::LOAD, Phase::STOPPED, reader.into())
                .map_err(protocol_err(&name, &socket, "SET_DEVICE_STATE_FD"))?
        };
        let mut to = other.unwrap_or_else(|| File::from(writer));
        let bytes = state.to_vec();
        with_timeout(move || to.write_all(&bytes))
            .map_err(|e| self.transfer_err(format!("writing its state: {e}")))?;
        self.check_device_state("restoring")?;
        tracing::info!(device = %self.name, "device state given back");
        Ok(())
    }

    fn check_device_state(&mut self, doing: &str) -> Result<(), FrontendError> {
        let _deadline = self.deadline();
        Frontend::check_device_state(&self.frontend).map_err(|_| {
            self.transfer_err(format!(
                "the backend failed {doing} its device state (its log says why)"
            ))
        })
    }
}

fn pipe() -> std::io::Result<(File, OwnedFd)> {
    let (r, w) = std::io::pipe()?;
    Ok((File::from(OwnedFd::from(r)), OwnedFd::from(w)))
}

/// Run `f` (blocking pipe I/O) on a thread, waiting at most [`TRANSFER_TIMEOUT`]: a backend
/// that never closes its end cannot hold the snapshot forever.
fn with_timeout<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = mpsc::channel();
    crate::threads::builder("device-state").spawn(move || {
        let _ = tx.send(f());
    })?;
    rx.recv_timeout(TRANSFER_TIMEOUT).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no end of the transfer within {TRANSFER_TIMEOUT:?}"),
        )
    })?
}
