//! Messages a backend sends us on its own channel (BACKEND_REQ): today CONFIG_CHANGE_MSG, which
//! becomes a configuration-change interrupt for the guest (e.g. after an online disk resize,
//! the guest's driver rereads the capacity).

use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex, OnceLock};

use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};

use crate::virtio::pci::VirtioPciDevice;

type OnConfigChange = Box<dyn Fn() + Send + Sync>;

/// Forwards a backend's requests to its device (known once the device exists).
pub struct Relay {
    name: String,
    on_config_change: OnceLock<OnConfigChange>,
}

impl VhostUserFrontendReqHandler for Relay {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        tracing::info!(device = %self.name, "the backend changed the device's configuration");
        if let Some(f) = self.on_config_change.get() {
            f();
        }
        Ok(0)
    }
}

/// The channel we give a backend, and the relay behind it.
pub struct BackendChannel {
    handler: FrontendReqHandler<Relay>,
    relay: Arc<Relay>,
}

impl BackendChannel {
    pub fn new(name: &str, reply_ack: bool) -> vhost::vhost_user::Result<BackendChannel> {
        let relay = Arc::new(Relay {
            name: name.into(),
            on_config_change: OnceLock::new(),
        });
        let mut handler = FrontendReqHandler::new(relay.clone())?;
        handler.set_reply_ack_flag(reply_ack);
        Ok(BackendChannel { handler, relay })
    }

    /// The descriptor to send with SET_BACKEND_REQ_FD.
    pub fn backend_end(&self) -> impl AsRawFd {
        self.handler.get_tx_raw_fd()
    }

    /// Serve the backend's requests for `device` on a thread, until the backend goes away.
    pub fn spawn(self, device: Arc<Mutex<VirtioPciDevice>>) -> std::io::Result<()> {
        self.serve(Box::new(move || {
            device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_changed_by_device()
        }))
        .map(|_| ())
    }

    /// What ends this channel's serving thread once its backend is gone: the thread never sees
    /// the backend's end close by itself, because the handler keeps that end too.
    pub fn closer(&self) -> std::io::Result<ChannelCloser> {
        // SAFETY: dup of the handler's open socket; the copy is owned by the OwnedFd.
        let fd = unsafe { libc::dup(self.handler.get_tx_raw_fd()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(ChannelCloser(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd)
        }))
    }

    fn serve(
        mut self,
        on_config_change: OnConfigChange,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let _ = self.relay.on_config_change.set(on_config_change);
        let name = self.relay.name.clone();
        crate::threads::builder(format!("{name}-backend-req")).spawn(move || loop {
            match self.handler.handle_request() {
                Ok(_) => {}
                Err(vhost::vhost_user::Error::Disconnected) => return,
                Err(e) => {
                    // the stream cannot be trusted past a bad message: stop serving it
                    tracing::warn!(device = %name, error = %e, "backend request channel closed");
                    return;
                }
            }
        })
    }
}

/// Shuts a backend request channel down (see [`BackendChannel::closer`]).
pub struct ChannelCloser(std::os::fd::OwnedFd);

impl ChannelCloser {
    /// The backend is gone: end the channel, so that its thread returns.
    pub fn close(self) {
        // SAFETY: shutdown on our own open descriptor (closed when `self` drops).
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// CONFIG_CHANGE_MSG as the vhost-user spec lays it out (and libvhost-user sends it),
    /// built by hand: request 2, flags = version 1 | NEED_REPLY (bit 3), no payload.
    const CONFIG_CHANGE_MSG: [u8; 12] = [2, 0, 0, 0, 0x09, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn config_change_msg_calls_back_and_is_acknowledged() {
        let channel = BackendChannel::new("blk0", true).unwrap();
        // SAFETY: a dup of the channel's backend end, owned by the stream from here on.
        let mut backend =
            unsafe { UnixStream::from_raw_fd(libc::dup(channel.backend_end().as_raw_fd())) };
        backend
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let _thread = channel
            .serve(Box::new(move || {
                seen.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
        backend.write_all(&CONFIG_CHANGE_MSG).unwrap();
        let mut reply = [0u8; 20];
        backend.read_exact(&mut reply).unwrap();
        // a reply to request 2 (flags: version 1 | REPLY bit 2) carrying 0 = success
        assert_eq!(&reply[..4], &[2, 0, 0, 0]);
        assert_eq!(reply[4] & 0x07, 0x05);
        assert_eq!(&reply[12..], &[0u8; 8]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_closed_channel_ends_its_thread() {
        let channel = BackendChannel::new("blk0", true).unwrap();
        let closer = channel.closer().unwrap();
        let thread = channel.serve(Box::new(|| {})).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!thread.is_finished(), "it serves until the backend is gone");
        closer.close();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            thread.is_finished(),
            "the thread still waits on a closed channel"
        );
    }

    #[test]
    fn a_malformed_request_ends_the_channel() {
        let channel = BackendChannel::new("blk0", true).unwrap();
        // SAFETY: a dup of the channel's backend end, owned by the stream from here on.
        let mut backend =
            unsafe { UnixStream::from_raw_fd(libc::dup(channel.backend_end().as_raw_fd())) };
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let thread = channel
            .serve(Box::new(move || {
                seen.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
        // CONFIG_CHANGE_MSG carries no payload; this one says it has 8 bytes, and has them
        let mut msg = CONFIG_CHANGE_MSG;
        msg[8] = 8;
        backend.write_all(&msg).unwrap();
        backend.write_all(&[0; 8]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            thread.is_finished(),
            "it still serves a stream it cannot trust"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the device was not told");
    }
}
