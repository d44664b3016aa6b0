//! Messages from a backend to its frontend on the backend-request channel
//! (`SET_BACKEND_REQ_FD`). The vhost crate's `Backend` (0.18) cannot send
//! `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`, so the relay keeps a copy of the channel's socket
//! and this sends the message itself: request 2, version 1, no payload and no reply asked
//! (so nothing needs to be read back from a socket the vhost crate also owns).

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

const BACKEND_CONFIG_CHANGE_MSG: u32 = 2;
const FLAG_VERSION_1: u32 = 0x1;

/// The current connection's channel to its frontend, if the frontend gave one.
#[derive(Clone, Default)]
pub struct FrontendChannel {
    socket: Arc<Mutex<Option<UnixStream>>>,
}

impl FrontendChannel {
    pub fn set(&self, socket: UnixStream) {
        if let Ok(mut s) = self.socket.lock() {
            *s = Some(socket);
        }
    }

    /// Tell the frontend the device's configuration space changed, so that it interrupts the
    /// guest's driver (which then rereads it). False if the frontend gave no channel.
    pub fn config_changed(&self) -> io::Result<bool> {
        let mut guard = self
            .socket
            .lock()
            .map_err(|_| io::Error::other("channel lock poisoned"))?;
        let Some(socket) = guard.as_mut() else {
            return Ok(false);
        };
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&BACKEND_CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&FLAG_VERSION_1.to_le_bytes());
        socket.write_all(&msg)?;
        Ok(true)
    }
}
