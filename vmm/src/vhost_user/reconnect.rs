//! A backend that goes away (killed, crashed, restarted for an upgrade) is reconnected, and the
//! guest sees only a pause. One thread per vhost-user device watches its connection:
//!
//! ```text
//!   Up ──(socket hang-up, or a call that fails on a dead socket)──► Down(since)
//!   Down ──(connect to the same path: at once, then backoff doubling to 100 ms, forever)──►
//!        handshake (owner, features ⊇ negotiated, protocol features ⊇ negotiated, queue count)
//!        ──► if the driver runs the device: SET_FEATURES, memory table, the same in-flight
//!            region (INFLIGHT_SHMFD), every ring from the guest's used index, one kick and
//!            one call per ring, the config space as the guest last saw it if the new
//!            backend's differs (SET_CONFIG, LIVE_MIGRATION) ──► GET_CONFIG ──► Up
//!            (reconnects += 1)
//!   a failed handshake or replay stays Down (logged once per distinct error) and tries again
//! ```
//!
//! While Down, the guest's kicks accumulate in the KVM ioeventfds (the new backend gets the
//! same eventfds), config reads are served from the copy last read, a driver reset or a
//! reboot just forgets the rings, and an activation is recorded and replayed on the next
//! connection. No DEVICE_NEEDS_RESET: Linux ignores it, so it only ever turned a short outage
//! into a dead disk.
//!
//! Ring positions: each ring restarts at the used index in guest memory, so what the guest
//! saw completed is never redone and what it did not see is redone — exact for devices that
//! complete in order (net, balloon, blk's sync engine). A device completing out of order (blk
//! on io_uring) needs the backend's in-flight record (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) to
//! skip what it completed after an earlier request: the vmm hands the new backend the region
//! the old one kept it in ([`super::inflight`]); see docs/architecture.md.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vhost::vhost_user::{Frontend, VhostUserFrontend};

use vhost::vhost_user::VhostUserProtocolFeatures;

use super::backend_requests::BackendChannel;
use super::{handshake, FrontendError, Handshake, VhostUserDevice};
use crate::virtio::pci::VirtioPciDevice;
use crate::virtio::{QueueSetup, VirtioDevice, VirtioDeviceState};

/// The longest pause between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(100);
const NO_OUTAGE: u64 = u64::MAX;

/// Whether a device's backend is reachable, and how its outages went: shared with the API,
/// which reads it without taking any lock (a hung backend never blocks `vm.info`).
#[derive(Debug)]
pub struct LinkStatus {
    up: AtomicBool,
    reconnects: AtomicU64,
    last_outage_ms: AtomicU64,
}

impl Default for LinkStatus {
    fn default() -> Self {
        LinkStatus {
            up: AtomicBool::new(true),
            reconnects: AtomicU64::new(0),
            last_outage_ms: AtomicU64::new(NO_OUTAGE),
        }
    }
}

impl LinkStatus {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
    /// Successful reconnections since the VM started.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    /// How long the last finished outage lasted, from the hang-up to the replayed rings.
    pub fn last_outage(&self) -> Option<Duration> {
        match self.last_outage_ms.load(Ordering::Relaxed) {
            NO_OUTAGE => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// The device's side of the link: the shared status, when the current outage began, and
/// whether the config copy came from a backend (until then it is zeros: nothing to restore).
#[derive(Debug, Default)]
pub struct Link {
    pub status: Arc<LinkStatus>,
    down_since: Option<Instant>,
    config_read: bool,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.down_since.is_none()
    }
}

/// How long one exchange with the backend (a handshake, an activation, a reset, a config read
/// or write: sending and waiting for the replies) may take. A backend that takes longer is
/// treated as gone: the connection is closed (see [`super::call_deadline`]) and the device
/// reconnects, so a stopped or stuck backend never holds a vCPU or the API for longer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A frontend on `stream`; its exchanges are bounded by [`super::call_deadline`], not by
/// socket timeouts (vhost retries a timed-out receive for ever).
pub(super) fn new_frontend(stream: UnixStream) -> Frontend {
    Frontend::from_stream(stream, crate::virtio::pci::MAX_QUEUES as u64)
}

/// What a GET_CONFIG of the whole space brought: the space, a reply of another size (the
/// copy is kept), or no reply (the connection is closed).
enum Fetched {
    Space(Vec<u8>),
    WrongSize,
    Failed,
}

impl VhostUserDevice {
    /// Close the connection (a call failed or timed out, so replies may be out of step) and
    /// go down: the reconnect thread sees the hang-up and brings the backend back.
    pub(super) fn close_connection(&mut self) {
        // SAFETY: shutdown on the Frontend's own open socket; it stays open (and owned).
        unsafe { libc::shutdown(self.frontend.as_raw_fd(), libc::SHUT_RDWR) };
        self.backend_gone();
    }

    /// Whether the backend's end of the connection is closed (checked without blocking).
    #[cfg(test)]
    pub(super) fn peer_gone(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.frontend.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives across the call; timeout 0 never blocks.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// The backend went away: the device is Down until [`Self::reconnect`] succeeds. Logged
    /// once per outage.
    pub fn backend_gone(&mut self) {
        if self.link.down_since.is_some() {
            return;
        }
        self.link.down_since = Some(Instant::now());
        self.link.status.up.store(false, Ordering::Release);
        if let Some(closer) = self.channel_closer.take() {
            closer.close(); // its thread would wait on the dead backend for good
        }
        if self.retired {
            tracing::info!(device = %self.name, "backend connection closed: the device was removed");
            return;
        }
        if self.released {
            tracing::info!(device = %self.name, "backend handed over to a migration's destination");
            return;
        }
        tracing::error!(
            device = %self.name,
            socket = %self.socket.display(),
            "backend gone; reconnecting (the guest sees a pause)"
        );
        eprintln!(
            "splitvisor: device {}: the vhost-user backend on {} disconnected; reconnecting",
            self.name,
            self.socket.display()
        );
    }

    /// The status the API shows.
    pub fn link_status(&self) -> Arc<LinkStatus> {
        self.link.status.clone()
    }

    /// Fetch the whole config space from the backend into the copy reads are served from;
    /// false if the backend failed to answer (the connection is then closed).
    pub(super) fn refresh_config(&mut self) -> bool {
        match self.fetch_config() {
            Fetched::Space(space) => {
                self.config_cache = space;
                self.link.config_read = true;
                true
            }
            Fetched::WrongSize => true,
            Fetched::Failed => false,
        }
    }

    /// The backend's whole config space (QEMU's convention: from offset 0, then sliced). A
    /// wrong size or a failure is logged; a failure closes the connection.
    fn fetch_config(&mut self) -> Fetched {
        use vhost::vhost_user::message::VhostUserConfigFlags;
        let size = self.config_size;
        let deadline = self.deadline();
        let reply = self.frontend.get_config(
            0,
            size,
            VhostUserConfigFlags::WRITABLE,
            &vec![0u8; size as usize],
        );
        drop(deadline);
        match reply {
            Ok((_, payload)) if payload.len() == self.config_cache.len() => Fetched::Space(payload),
            Ok(_) => {
                tracing::warn!(device = %self.name, "GET_CONFIG answered a wrong size");
                Fetched::WrongSize
            }
            Err(e) => {
                tracing::warn!(device = %self.name, error = %e, "GET_CONFIG failed");
                self.close_connection();
                Fetched::Failed
            }
        }
    }

    /// The config space on a new connection. Under a running driver, a backend whose space
    /// differs from the one last read (by the guest) gets that one first (SET_CONFIG flagged
    /// LIVE_MIGRATION: a new balloon process takes back its predecessor's target, others ignore
    /// it); an unchanged space is not sent (libvhost-user backends die of a SET_CONFIG they
    /// refuse). False if a GET_CONFIG failed (the connection is then closed).
    fn take_over_config(&mut self) -> bool {
        if self.ring_setups.is_empty() || !self.link.config_read {
            return self.refresh_config();
        }
        match self.fetch_config() {
            Fetched::Space(space) if space != self.config_cache => {
                self.restore_config();
                self.refresh_config()
            }
            Fetched::Space(_) | Fetched::WrongSize => true,
            Fetched::Failed => false,
        }
    }

    /// Send the backend the config space as last seen (a snapshot restore will too), with an
    /// ack asked for under REPLY_ACK. A refusal or failure is only logged.
    pub(super) fn restore_config(&mut self) {
        use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
        let ack = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        if ack {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let deadline = self.deadline();
        let sent =
            self.frontend
                .set_config(0, VhostUserConfigFlags::LIVE_MIGRATION, &self.config_cache);
        drop(deadline);
        if ack {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        }
        match sent {
            Ok(()) => {
                tracing::info!(device = %self.name, "config space restored to the new backend")
            }
            Err(e) => tracing::warn!(device = %self.name, error = %e, "config restore failed"),
        }
    }

    /// Take over a new connection to the backend: the handshake, the checks that the new
    /// backend can serve what the guest already negotiated, and the rings the driver runs.
    /// Returns the backend's request channel to serve, if it has one. (The reconnect thread
    /// does the handshake without holding the device, then [`Self::take_over`].)
    pub fn reconnect(
        &mut self,
        stream: UnixStream,
    ) -> Result<Option<BackendChannel>, FrontendError> {
        let mut frontend = new_frontend(stream);
        let (name, socket, protocol, timeout) = self.identity();
        let hs = handshake(&name, &socket, &mut frontend, protocol, timeout)?;
        self.take_over(frontend, hs)
    }

    /// What the reconnect thread needs to run a handshake without holding the device: the
    /// device's name, its socket, the protocol features to ask for and the call timeout.
    fn identity(&self) -> (String, PathBuf, VhostUserProtocolFeatures, Duration) {
        let (name, socket) = (self.name.clone(), self.socket.clone());
        (name, socket, self.protocol, self.call_timeout)
    }

    /// The checks and the replay of [`Self::reconnect`] on a connection whose handshake is
    /// done. On failure the device stays down, and a connection it started using is closed
    /// (the backend serves one frontend at a time and must see us go).
    fn take_over(
        &mut self,
        frontend: Frontend,
        hs: Handshake,
    ) -> Result<Option<BackendChannel>, FrontendError> {
        let (device, socket) = (self.name.clone(), self.socket.clone());
        let refused = |what: String| FrontendError::Reconnect {
            device: device.clone(),
            socket: socket.clone(),
            what,
        };
        if self.retired {
            // removed from the VM while this connection was being made
            return Err(refused("the device was removed".into()));
        }
        // what the guest may already rely on: the features it acked, or (before it did) the
        // ones it was offered
        let needed = match self.acked_features {
            0 => self.backend_features,
            acked => acked,
        } & !super::VHOST_ONLY;
        let missing = needed & !hs.backend_features;
        if missing != 0 {
            return Err(refused(format!(
                "it does not offer features {missing:#x} the guest negotiated"
            )));
        }
        if hs.protocol != self.protocol {
            return Err(refused(format!(
                "it offers protocol features {:?}, not the negotiated {:?}",
                hs.protocol, self.protocol
            )));
        }
        if let Some(max) = hs.queue_num {
            if max < self.queue_sizes.len() {
                return Err(refused(format!(
                    "it serves {max} queues, the device has {}",
                    self.queue_sizes.len()
                )));
            }
        }
        self.frontend = frontend;
        self.regions_added = false;
        if let Some(old) = self.channel_closer.take() {
            old.close();
        }
        self.channel_closer = hs.channel.as_ref().and_then(|c| c.closer().ok());
        if self.suspended {
            tracing::info!(device = %self.name, "rings left stopped: a snapshot is being taken");
            // a new backend (or the one a migration gave back, whose state went to the
            // destination) gets the state this device's suspend took
            if let Some(state) = self.saved_state.clone() {
                if let Err(e) = self.load_device_state(&state) {
                    tracing::warn!(device = %self.name, error = %e, "cannot give the backend its state back");
                }
            }
        } else if !self.ring_setups.is_empty() {
            if let Err(e) = self.start_rings(super::suspend::RingBase::UsedIndex) {
                self.close_connection();
                return Err(e);
            }
            for r in &self.ring_setups {
                // work the guest queued while we were down, and completions it may have missed
                let _ = r.kick.write(1);
                let _ = r.call.write(1);
            }
        }
        if self.protocol.contains(VhostUserProtocolFeatures::CONFIG) && !self.take_over_config() {
            return Err(refused("GET_CONFIG failed".into()));
        }
        let outage = self.link.down_since.take().map(|t| t.elapsed());
        let status = &self.link.status;
        status.reconnects.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = outage {
            status.last_outage_ms.store(
                d.as_millis().min(u128::from(NO_OUTAGE - 1)) as u64,
                Ordering::Relaxed,
            );
        }
        status.up.store(true, Ordering::Release);
        tracing::warn!(
            device = %self.name,
            rings = self.ring_setups.len(),
            outage_ms = outage.map(|d| d.as_millis() as u64),
            "the vhost-user backend is back"
        );
        Ok(hs.channel)
    }
}

/// A [`VhostUserDevice`] that the transport and the reconnect thread share. The transport's
/// calls lock it; the reconnect thread never holds it while it waits.
pub struct SharedVhostUser(pub Arc<Mutex<VhostUserDevice>>);

impl SharedVhostUser {
    fn lock(&self) -> MutexGuard<'_, VhostUserDevice> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl VirtioDevice for SharedVhostUser {
    fn device_type(&self) -> u32 {
        self.lock().device_type()
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        self.lock().queue_max_sizes()
    }
    fn features(&self) -> u64 {
        self.lock().features()
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.lock().read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.lock().write_config(offset, data)
    }
    fn activate(&mut self, features: u64, queues: &[QueueSetup]) -> Result<(), String> {
        self.lock().activate(features, queues)
    }
    fn reset(&mut self) {
        self.lock().reset()
    }
    fn state(&self) -> VirtioDeviceState {
        self.lock().state()
    }
    fn suspend(&mut self) -> Result<(), String> {
        self.lock().suspend().map_err(|e| e.to_string())
    }
    fn resume(&mut self) -> Result<(), String> {
        self.lock().resume_suspended().map_err(|e| e.to_string())
    }
    fn restore_activated(
        &mut self,
        state: &VirtioDeviceState,
        features: u64,
        queues: &[crate::virtio::QueueSetup],
    ) -> Result<(), String> {
        let VirtioDeviceState::VhostUser(s) = state else {
            return Err("the snapshot holds no vhost-user state for this device".into());
        };
        self.lock().restore_activation(s, features, queues)
    }
}

/// Wait until the other end of `file` hangs up (or the descriptor fails).
fn wait_for_hangup(file: &File) {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n < 0
            || pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
        {
            return;
        }
    }
}

/// A duplicate of the device's current connection, to poll without holding the device.
fn watch_handle(device: &Mutex<VhostUserDevice>) -> std::io::Result<File> {
    let fd = device.lock().unwrap_or_else(|e| e.into_inner()).socket_fd();
    // SAFETY: dup of a descriptor the device's Frontend owns; the copy is owned by the File.
    let dup = unsafe { libc::dup(fd) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(dup) })
}

/// Watch `device`'s backend connection and bring it back whenever it goes away, until the
/// device is retired (removed from the VM). `transport` is what a new backend request channel raises interrupts on.
pub fn spawn(
    name: String,
    socket: PathBuf,
    device: Arc<Mutex<VhostUserDevice>>,
    transport: Arc<Mutex<VirtioPciDevice>>,
) -> std::io::Result<()> {
    let mut handle = watch_handle(&device)?;
    crate::threads::builder(format!("{name}-reconnect"))
        .spawn(move || loop {
            wait_for_hangup(&handle);
            {
                let mut d = device.lock().unwrap_or_else(|e| e.into_inner());
                d.backend_gone();
                if d.is_retired() {
                    tracing::debug!(device = %name, "removed: its reconnect thread ends");
                    return;
                }
            }
            let channel = reconnect_until_up(&name, &socket, &device);
            if device.lock().unwrap_or_else(|e| e.into_inner()).is_retired() {
                return;
            }
            if let Some(channel) = channel {
                if let Err(e) = channel.spawn(transport.clone()) {
                    tracing::error!(device = %name, error = %e, "cannot serve the backend's requests");
                }
            }
            handle = match watch_handle(&device) {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(device = %name, error = %e, "cannot watch the backend connection");
                    return;
                }
            };
        })
        .map(|_| ())
}

/// Connect and take the connection over until it works; the backoff doubles from 1 ms to
/// [`MAX_BACKOFF`]. Each distinct failure is logged once.
fn reconnect_until_up(
    name: &str,
    socket: &std::path::Path,
    device: &Mutex<VhostUserDevice>,
) -> Option<BackendChannel> {
    let mut delay = Duration::ZERO;
    let mut last_error = String::new();
    loop {
        std::thread::sleep(delay);
        delay = (delay * 2).clamp(Duration::from_millis(1), MAX_BACKOFF);
        let (released, retired) = {
            let d = device.lock().unwrap_or_else(|e| e.into_inner());
            (d.is_released(), d.is_retired())
        };
        if retired {
            return None;
        }
        if released {
            // a migration's destination has the backend: connect only once it is reclaimed
            delay = super::handover::RECLAIM_POLL;
            continue;
        }
        let stream = match UnixStream::connect(socket) {
            Ok(s) => s,
            Err(e) => {
                note(name, &mut last_error, format!("cannot connect: {e}"));
                continue;
            }
        };
        // the handshake talks to a backend that may hang: not while holding the device
        let (dev_name, dev_socket, protocol, timeout) =
            device.lock().unwrap_or_else(|e| e.into_inner()).identity();
        let mut frontend = new_frontend(stream);
        let hs = handshake(&dev_name, &dev_socket, &mut frontend, protocol, timeout);
        let result = hs.and_then(|hs| {
            device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take_over(frontend, hs)
        });
        match result {
            Ok(channel) => return channel,
            Err(e) => note(name, &mut last_error, e.to_string()),
        }
    }
}

fn note(name: &str, last: &mut String, error: String) {
    if *last != error {
        tracing::warn!(device = %name, %error, "reconnect attempt failed; trying again");
        *last = error;
    }
}

#[cfg(test)]
#[path = "reconnect_replay_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "reconnect_tests.rs"]
mod reconnect_tests;

#[cfg(test)]
#[path = "config_restore_tests.rs"]
mod config_restore_tests;
