//! A relay between the frontend's connection and the vhost crate's request handler, for one
//! frontend ordering the handler refuses.
//!
//! QEMU's virtio-net (7.2 and later) enables queue pair 0 with `SET_VRING_ENABLE` as soon as
//! the guest writes its feature bits — before QEMU has sent `SET_FEATURES` to the backend.
//! The vhost crate answers a `SET_VRING_ENABLE` that arrives before `VHOST_USER_F_PROTOCOL_
//! FEATURES` was acknowledged with an error and drops the connection, so no rust-vmm net
//! backend works under QEMU. The relay passes every message through unchanged (payload and
//! file descriptors), except such an early `SET_VRING_ENABLE`: it is acknowledged here (when
//! the frontend asked for an ack), and the last one for each ring is passed on right after
//! `SET_FEATURES` — QEMU does not send it again when it starts the device. For a device that
//! tracks inflight requests the relay also answers GET_INFLIGHT_FD and SET_INFLIGHT_FD, which
//! the handler refuses ([`crate::inflight`]). A `SET_CONFIG` flagged
//! `VHOST_USER_CONFIG_LIVE_MIGRATION` (the vmm restoring the config space a killed backend
//! served) never reaches the handler, which drops the flags and could not tell it from a
//! driver's write: it goes to [`Hooks::config_restore`], or is dropped. Only control messages
//! cross the relay; the data path is the shared memory and eventfds.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HEADER_LEN: usize = 12;
/// Larger than any vhost-user message body (the memory table with 8 regions is 264 bytes).
const MAX_BODY: usize = 4096;
const MAX_FDS: usize = 32;

const REQ_SET_FEATURES: u32 = 2;
const REQ_SET_PROTOCOL_FEATURES: u32 = 16;
const REQ_SET_VRING_ENABLE: u32 = 18;
const REQ_SET_BACKEND_REQ_FD: u32 = 21;
const REQ_SET_CONFIG: u32 = 25;
/// SET_CONFIG's flag for a restored config space (the vhost crate's
/// `VhostUserConfigFlags::LIVE_MIGRATION`).
const CONFIG_F_LIVE_MIGRATION: u32 = 0x2;
/// SET_CONFIG's body before the payload: offset, size and flags (u32 each).
const CONFIG_HEADER_LEN: usize = 12;
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;
use crate::inflight::messages::{REQ_GET_INFLIGHT_FD, REQ_SET_INFLIGHT_FD};
use crate::inflight::InflightSlot;

/// One vhost-user message: header, body and the descriptors that came with it (closed when
/// the message is dropped, after they were passed on).
struct Message {
    header: [u8; HEADER_LEN],
    body: Vec<u8>,
    files: Vec<File>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ])
    }
    fn flags(&self) -> u32 {
        u32::from_le_bytes([
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ])
    }
    /// The little-endian u32 at `at` in the body (0 past its end).
    fn body_u32(&self, at: usize) -> u32 {
        self.body
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }
    fn body_u64(&self) -> u64 {
        self.body
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }
}

/// Read one message; `None` at a clean end of stream.
fn receive(from: &mut UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_LEN];
    let mut fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: HEADER_LEN,
    }];
    // SAFETY: the iovec points at `header`, which we own and may be overwritten.
    let (n, nfds) = unsafe { from.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let files: Vec<File> = fds[..nfds]
        .iter()
        // SAFETY: recvmsg gave us these descriptors; nobody else owns them.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    from.read_exact(&mut header[n..])?;
    let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if size > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a vhost-user message with a {size}-byte body"),
        ));
    }
    let mut body = vec![0u8; size];
    from.read_exact(&mut body)?;
    Ok(Some(Message {
        header,
        body,
        files,
    }))
}

fn send(to: &mut UnixStream, m: &Message) -> io::Result<()> {
    let fds: Vec<RawFd> = m
        .files
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    let mut whole = Vec::with_capacity(HEADER_LEN + m.body.len());
    whole.extend_from_slice(&m.header);
    whole.extend_from_slice(&m.body);
    let sent = to
        .send_with_fds(&[&whole[..]], &fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // the descriptors went with the first byte; the rest is plain data
    to.write_all(&whole[sent..])
}

/// The frontend's view of the negotiation so far.
#[derive(Default)]
struct Negotiation {
    features_set: AtomicBool,
    protocol_features: AtomicU64,
}

/// Takes a config space the frontend restores: its offset and bytes (not checked: the device
/// checks them against its space). An error refuses it (the frontend's ack says so).
pub type ConfigRestore = Arc<dyn Fn(u32, &[u8]) -> io::Result<()> + Send + Sync>;

/// What the relay serves itself for the device behind it.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Gets a copy of the backend-request socket the frontend hands over (SET_BACKEND_REQ_FD).
    pub channel: crate::frontend_channel::FrontendChannel,
    /// For a device that tracks inflight requests: where SET_INFLIGHT_FD's region goes.
    pub inflight: Option<InflightSlot>,
    /// For a device whose state is in its config space: takes a restored space (SET_CONFIG
    /// with LIVE_MIGRATION). Without it such a message is acked and dropped.
    pub config_restore: Option<ConfigRestore>,
}

/// Relay messages between `frontend` and `backend` (the handler's end) until either side
/// closes; then close both.
pub fn spawn(frontend: UnixStream, backend: UnixStream, hooks: Hooks) -> io::Result<()> {
    start(frontend, backend, hooks).map(drop)
}

/// The relay's two threads, each ending with why it stopped.
#[cfg_attr(not(test), allow(dead_code))] // only the tests wait for them
struct Threads {
    /// Frontend to backend.
    inbound: JoinHandle<io::Result<()>>,
    /// Backend to frontend.
    outbound: JoinHandle<io::Result<()>>,
}

/// [`spawn`], keeping the threads' handles (the tests wait for them).
fn start(frontend: UnixStream, backend: UnixStream, hooks: Hooks) -> io::Result<Threads> {
    let state = Arc::new(Negotiation::default());
    let front_reader = frontend.try_clone()?;
    let front_writer = Arc::new(Mutex::new(frontend));
    let back_reader = backend.try_clone()?;
    let back_writer = backend;

    let (fw, st) = (front_writer.clone(), state.clone());
    let inbound = std::thread::Builder::new()
        .name("vu-relay-in".into())
        .spawn(move || {
            let result = frontend_to_backend(front_reader, back_writer, &fw, &st, &hooks);
            if let Err(e) = &result {
                tracing::debug!("relay from the frontend ended: {e}");
            }
            result
        })?;
    let outbound = std::thread::Builder::new()
        .name("vu-relay-out".into())
        .spawn(move || {
            let result = backend_to_frontend(back_reader, &front_writer);
            if let Err(e) = &result {
                tracing::debug!("relay to the frontend ended: {e}");
            }
            result
        })?;
    Ok(Threads { inbound, outbound })
}

fn frontend_to_backend(
    mut front: UnixStream,
    mut back: UnixStream,
    front_writer: &Mutex<UnixStream>,
    state: &Negotiation,
    hooks: &Hooks,
) -> io::Result<()> {
    // the latest early SET_VRING_ENABLE per ring, replayed after SET_FEATURES
    let mut early: std::collections::BTreeMap<u32, Message> = Default::default();
    let result = (|| {
        while let Some(mut m) = receive(&mut front)? {
            tracing::trace!(request = m.request(), body = ?m.body, fds = m.files.len(), "frontend message");
            match m.request() {
                REQ_SET_FEATURES => {
                    state.features_set.store(true, Ordering::Relaxed);
                    send(&mut back, &m)?;
                    for (_, enable) in std::mem::take(&mut early) {
                        send(&mut back, &enable)?;
                    }
                    continue;
                }
                REQ_SET_PROTOCOL_FEATURES => state
                    .protocol_features
                    .store(m.body_u64(), Ordering::Relaxed),
                REQ_SET_BACKEND_REQ_FD => {
                    if let Some(f) = m.files.first() {
                        hooks
                            .channel
                            .set(UnixStream::from(std::os::fd::OwnedFd::from(f.try_clone()?)));
                    }
                }
                REQ_GET_INFLIGHT_FD | REQ_SET_INFLIGHT_FD if hooks.inflight.is_some() => {
                    if let Some(slot) = &hooks.inflight {
                        let acks = state.protocol_features.load(Ordering::Relaxed)
                            & PROTOCOL_F_REPLY_ACK
                            != 0;
                        if let Some(reply) = serve_inflight(slot, &m, acks) {
                            let mut front = front_writer
                                .lock()
                                .map_err(|_| io::Error::other("relay lock poisoned"))?;
                            send(&mut front, &reply)?;
                        }
                    }
                    continue;
                }
                REQ_SET_CONFIG if is_config_restore(&m) => {
                    let acks =
                        state.protocol_features.load(Ordering::Relaxed) & PROTOCOL_F_REPLY_ACK != 0;
                    if let Some(reply) =
                        serve_config_restore(hooks.config_restore.as_ref(), &m, acks)
                    {
                        let mut front = front_writer
                            .lock()
                            .map_err(|_| io::Error::other("relay lock poisoned"))?;
                        send(&mut front, &reply)?;
                    }
                    continue;
                }
                REQ_SET_VRING_ENABLE if !state.features_set.load(Ordering::Relaxed) => {
                    tracing::debug!("early SET_VRING_ENABLE held by the relay until SET_FEATURES");
                    let wants_ack = m.flags() & FLAG_NEED_REPLY != 0
                        && state.protocol_features.load(Ordering::Relaxed) & PROTOCOL_F_REPLY_ACK
                            != 0;
                    if wants_ack {
                        let mut reply = Vec::with_capacity(HEADER_LEN + 8);
                        reply.extend_from_slice(&REQ_SET_VRING_ENABLE.to_le_bytes());
                        reply.extend_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
                        reply.extend_from_slice(&8u32.to_le_bytes());
                        reply.extend_from_slice(&0u64.to_le_bytes());
                        front_writer
                            .lock()
                            .map_err(|_| io::Error::other("relay lock poisoned"))?
                            .write_all(&reply)?;
                    }
                    // answered already: the replayed copy must not be answered again
                    let flags = m.flags() & !FLAG_NEED_REPLY;
                    m.header[4..8].copy_from_slice(&flags.to_le_bytes());
                    let ring = m.body_u64() as u32;
                    early.insert(ring, m);
                    continue;
                }
                _ => {}
            }
            send(&mut back, &m)?;
        }
        Ok(())
    })();
    // either side gone: the backend sees it now; the frontend once the other thread has passed
    // on every reply the backend wrote before it went (shutting the frontend's socket for
    // writing here lost the NACK of a request that ended the connection, now and then)
    let _ = back.shutdown(std::net::Shutdown::Both);
    let _ = front.shutdown(std::net::Shutdown::Read);
    result
}

/// A reply to `request`: version 1, REPLY, with `body` and `files`.
fn reply_message(request: u32, body: Vec<u8>, files: Vec<File>) -> Message {
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&request.to_le_bytes());
    header[4..8].copy_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
    header[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
    Message {
        header,
        body,
        files,
    }
}

/// Answer GET_INFLIGHT_FD (always) or SET_INFLIGHT_FD (an ack when asked and `acks`).
fn serve_inflight(slot: &InflightSlot, m: &Message, acks: bool) -> Option<Message> {
    use crate::inflight::messages;
    if m.request() == REQ_GET_INFLIGHT_FD {
        let r = messages::get_inflight_fd(slot, &m.body);
        return Some(reply_message(
            m.request(),
            r.body,
            r.file.into_iter().collect(),
        ));
    }
    let status: u64 = match messages::set_inflight_fd(slot, &m.body, &m.files) {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!("SET_INFLIGHT_FD refused: {e}");
            1
        }
    };
    (acks && m.flags() & FLAG_NEED_REPLY != 0)
        .then(|| reply_message(m.request(), status.to_le_bytes().to_vec(), Vec::new()))
}

/// Whether a SET_CONFIG restores a saved config space (its flags word has LIVE_MIGRATION).
fn is_config_restore(m: &Message) -> bool {
    m.body
        .get(8..CONFIG_HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .is_some_and(|b| u32::from_le_bytes(b) & CONFIG_F_LIVE_MIGRATION != 0)
}

/// Hand a restored config space to `hook` (none: nothing to restore); the ack when asked
/// and `acks`: 0 if it was taken (or there was no hook), 1 if it was refused.
fn serve_config_restore(hook: Option<&ConfigRestore>, m: &Message, acks: bool) -> Option<Message> {
    let offset = m.body_u32(0);
    let payload = m.body.get(CONFIG_HEADER_LEN..).unwrap_or_default();
    let result = if payload.len() != m.body_u32(4) as usize {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it announces {} bytes and carries {}",
                m.body_u32(4),
                payload.len()
            ),
        ))
    } else {
        match hook {
            Some(restore) => restore(offset, payload),
            None => {
                tracing::debug!("a restored config space, for a device with nothing to restore");
                Ok(())
            }
        }
    };
    let status: u64 = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!("restored config space refused (offset {offset}): {e}");
            1
        }
    };
    (acks && m.flags() & FLAG_NEED_REPLY != 0)
        .then(|| reply_message(m.request(), status.to_le_bytes().to_vec(), Vec::new()))
}

fn backend_to_frontend(mut back: UnixStream, front_writer: &Mutex<UnixStream>) -> io::Result<()> {
    let result = (|| {
        while let Some(m) = receive(&mut back)? {
            tracing::trace!(request = m.request(), size = m.body.len(), "backend reply");
            let mut front = front_writer
                .lock()
                .map_err(|_| io::Error::other("relay lock poisoned"))?;
            send(&mut front, &m)?;
        }
        Ok(())
    })();
    let _ = back.shutdown(std::net::Shutdown::Both);
    if let Ok(front) = front_writer.lock() {
        let _ = front.shutdown(std::net::Shutdown::Both);
    }
    result
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
