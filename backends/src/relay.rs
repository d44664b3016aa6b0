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
//! `SET_FEATURES` — QEMU does not send it again when it starts the device. Only control
//! messages cross the relay; the data path is the shared memory and eventfds.

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
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;

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

/// Relay messages between `frontend` and `backend` (the handler's end) until either side
/// closes; then close both. A copy of the backend-request socket the frontend hands over
/// (SET_BACKEND_REQ_FD) goes into `channel`.
pub fn spawn(
    frontend: UnixStream,
    backend: UnixStream,
    channel: crate::frontend_channel::FrontendChannel,
) -> io::Result<()> {
    start(frontend, backend, channel).map(drop)
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
fn start(
    frontend: UnixStream,
    backend: UnixStream,
    channel: crate::frontend_channel::FrontendChannel,
) -> io::Result<Threads> {
    let state = Arc::new(Negotiation::default());
    let front_reader = frontend.try_clone()?;
    let front_writer = Arc::new(Mutex::new(frontend));
    let back_reader = backend.try_clone()?;
    let back_writer = backend;

    let (fw, st) = (front_writer.clone(), state.clone());
    let inbound = std::thread::Builder::new()
        .name("vu-relay-in".into())
        .spawn(move || {
            let result = frontend_to_backend(front_reader, back_writer, &fw, &st, &channel);
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
    channel: &crate::frontend_channel::FrontendChannel,
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
                        channel.set(UnixStream::from(std::os::fd::OwnedFd::from(f.try_clone()?)));
                    }
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
    // either side gone: make sure both see it
    let _ = back.shutdown(std::net::Shutdown::Both);
    let _ = front.shutdown(std::net::Shutdown::Both);
    result
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
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::frontend_channel::FrontendChannel;

    const REQ_GET_FEATURES: u32 = 1;
    const REQ_SET_MEM_TABLE: u32 = 5;
    const LIMIT: Duration = Duration::from_secs(5);

    /// The test's ends of a relay: `front` plays the frontend, `back` the vhost handler.
    struct Ends {
        front: UnixStream,
        back: UnixStream,
        threads: Threads,
    }

    fn relay_with(channel: FrontendChannel) -> Ends {
        let (front, front_relay) = UnixStream::pair().expect("socketpair");
        let (back_relay, back) = UnixStream::pair().expect("socketpair");
        for s in [&front, &back] {
            s.set_read_timeout(Some(LIMIT)).expect("timeout");
        }
        let threads = start(front_relay, back_relay, channel).expect("relay");
        Ends {
            front,
            back,
            threads,
        }
    }

    fn relay() -> Ends {
        relay_with(FrontendChannel::default())
    }

    fn message(request: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    /// A vring-state body: ring index and value.
    fn vring(index: u32, num: u32) -> Vec<u8> {
        [index.to_le_bytes(), num.to_le_bytes()].concat()
    }

    fn write_with_fd(to: &UnixStream, bytes: &[u8], fd: Option<RawFd>) {
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let sent = to.send_with_fds(&[bytes], &fds).expect("send");
        (&*to).write_all(&bytes[sent..]).expect("send the rest");
    }

    /// One whole message (header and body) as it arrived, and the descriptor that came with it.
    fn read_message(from: &UnixStream) -> (Vec<u8>, Option<File>) {
        let mut header = [0u8; HEADER_LEN];
        let (n, file) = from.recv_with_fd(&mut header).expect("a message");
        assert!(n > 0, "end of stream instead of a message");
        (&*from).read_exact(&mut header[n..]).expect("header");
        let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let mut whole = header.to_vec();
        whole.resize(HEADER_LEN + size as usize, 0);
        (&*from).read_exact(&mut whole[HEADER_LEN..]).expect("body");
        (whole, file)
    }

    fn read_bytes(from: &UnixStream) -> Vec<u8> {
        read_message(from).0
    }

    /// The stream ends (the relay closed it) within the limit.
    fn assert_closed(s: &UnixStream, which: &str) {
        let mut buf = [0u8; 64];
        match (&*s).read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{which}: {n} more bytes instead of the end"),
            Err(e) => panic!("{which}: not closed within {LIMIT:?}: {e}"),
        }
    }

    /// Both threads end, without a panic, within the limit; why each ended.
    fn join(threads: Threads) -> (io::Result<()>, io::Result<()>) {
        let start = Instant::now();
        while !(threads.inbound.is_finished() && threads.outbound.is_finished()) {
            assert!(start.elapsed() < LIMIT, "the relay is still running");
            std::thread::sleep(Duration::from_millis(5));
        }
        let inbound = threads.inbound.join().expect("inbound thread panicked");
        let outbound = threads.outbound.join().expect("outbound thread panicked");
        (inbound, outbound)
    }

    /// `fd` is a working eventfd: a count written to it is read from `original`.
    fn assert_same_eventfd(fd: File, original: &EventFd) {
        let fd = std::os::fd::OwnedFd::from(fd);
        (&File::from(fd))
            .write_all(&3u64.to_ne_bytes())
            .expect("write to the received eventfd");
        assert_eq!(original.read().expect("read the original"), 3);
    }

    #[test]
    fn messages_and_their_fds_pass_both_ways_unchanged() {
        let ends = relay();
        let kick = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        // a frontend request with a descriptor (and a body the relay does not parse)
        let request = message(REQ_SET_MEM_TABLE, FLAG_VERSION_1, &[0x5a; 40]);
        write_with_fd(&ends.front, &request, Some(kick.as_raw_fd()));
        let (got, file) = read_message(&ends.back);
        assert_eq!(got, request, "byte-identical at the backend");
        assert_same_eventfd(file.expect("the eventfd came along"), &kick);
        // a backend reply with a descriptor
        let call = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let reply = message(REQ_GET_FEATURES, FLAG_VERSION_1 | FLAG_REPLY, &[7; 8]);
        write_with_fd(&ends.back, &reply, Some(call.as_raw_fd()));
        let (got, file) = read_message(&ends.front);
        assert_eq!(got, reply, "byte-identical at the frontend");
        assert_same_eventfd(file.expect("the eventfd came along"), &call);
        // and without descriptors
        let plain = message(REQ_GET_FEATURES, FLAG_VERSION_1, &[]);
        write_with_fd(&ends.front, &plain, None);
        let (got, file) = read_message(&ends.back);
        assert_eq!(got, plain);
        assert!(file.is_none(), "no descriptor made up");
        drop(ends.front);
        assert_closed(&ends.back, "backend");
        let (inbound, outbound) = join(ends.threads);
        assert!(inbound.is_ok() && outbound.is_ok(), "a clean end");
    }

    #[test]
    fn an_early_vring_enable_is_acked_here_and_replayed_after_set_features() {
        let ends = relay();
        let (front, back) = (&ends.front, &ends.back);
        let protocol = message(
            REQ_SET_PROTOCOL_FEATURES,
            FLAG_VERSION_1,
            &PROTOCOL_F_REPLY_ACK.to_le_bytes(),
        );
        write_with_fd(front, &protocol, None);
        assert_eq!(read_bytes(back), protocol);

        // before SET_FEATURES: ring 0 enabled then disabled, ring 1 enabled
        let ack_asked = FLAG_VERSION_1 | FLAG_NEED_REPLY;
        let ack = message(REQ_SET_VRING_ENABLE, FLAG_VERSION_1 | FLAG_REPLY, &[0; 8]);
        write_with_fd(
            front,
            &message(REQ_SET_VRING_ENABLE, ack_asked, &vring(0, 1)),
            None,
        );
        assert_eq!(read_bytes(front), ack, "acknowledged by the relay");
        write_with_fd(
            front,
            &message(REQ_SET_VRING_ENABLE, FLAG_VERSION_1, &vring(0, 0)),
            None,
        );
        write_with_fd(
            front,
            &message(REQ_SET_VRING_ENABLE, ack_asked, &vring(1, 1)),
            None,
        );
        assert_eq!(read_bytes(front), ack, "the one that asked, only");

        let features = message(
            REQ_SET_FEATURES,
            FLAG_VERSION_1,
            &(1u64 << 30).to_le_bytes(),
        );
        write_with_fd(front, &features, None);
        assert_eq!(read_bytes(back), features, "SET_FEATURES first");
        // then the last enable of each ring, no longer asking for a reply (it was given)
        let replayed = [vring(0, 0), vring(1, 1)];
        for body in replayed {
            let want = message(REQ_SET_VRING_ENABLE, FLAG_VERSION_1, &body);
            assert_eq!(read_bytes(back), want);
        }
        // nothing more was held back, and a later enable passes through as sent
        let late = message(REQ_SET_VRING_ENABLE, ack_asked, &vring(0, 1));
        write_with_fd(front, &late, None);
        assert_eq!(
            read_bytes(back),
            late,
            "after SET_FEATURES: passed on, NEED_REPLY kept"
        );
        let backend_ack = message(REQ_SET_VRING_ENABLE, FLAG_VERSION_1 | FLAG_REPLY, &[0; 8]);
        write_with_fd(back, &backend_ack, None);
        assert_eq!(
            read_bytes(front),
            backend_ack,
            "the backend answers it, once"
        );
        drop(ends.back);
        assert_closed(&ends.front, "frontend");
        let (inbound, outbound) = join(ends.threads);
        assert!(inbound.is_ok() && outbound.is_ok());
    }

    #[test]
    fn an_early_vring_enable_is_not_acked_without_reply_ack() {
        let ends = relay();
        let (front, back) = (&ends.front, &ends.back);
        let flags = FLAG_VERSION_1 | FLAG_NEED_REPLY;
        write_with_fd(
            front,
            &message(REQ_SET_VRING_ENABLE, flags, &vring(0, 1)),
            None,
        );
        let features = message(REQ_SET_FEATURES, FLAG_VERSION_1, &[0; 8]);
        write_with_fd(front, &features, None);
        assert_eq!(read_bytes(back), features);
        let replayed = message(REQ_SET_VRING_ENABLE, FLAG_VERSION_1, &vring(0, 1));
        assert_eq!(read_bytes(back), replayed);
        // the frontend got nothing: the next thing it reads is the backend's
        let reply = message(REQ_GET_FEATURES, FLAG_VERSION_1 | FLAG_REPLY, &[1; 8]);
        write_with_fd(back, &reply, None);
        assert_eq!(read_bytes(front), reply);
    }

    #[test]
    fn the_backend_request_channel_is_kept_for_config_change_messages() {
        let channel = FrontendChannel::default();
        let ends = relay_with(channel.clone());
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        theirs.set_read_timeout(Some(LIMIT)).expect("timeout");
        let request = message(REQ_SET_BACKEND_REQ_FD, FLAG_VERSION_1, &[]);
        write_with_fd(&ends.front, &request, Some(ours.as_raw_fd()));
        drop(ours);
        let (got, file) = read_message(&ends.back);
        assert_eq!(got, request);
        assert!(file.is_some(), "the handler gets the socket too");
        assert!(
            channel.config_changed().expect("send"),
            "a channel was kept"
        );
        let (msg, _) = read_message(&theirs);
        assert_eq!(msg, message(2, FLAG_VERSION_1, &[]));
    }

    #[test]
    fn an_oversized_body_ends_the_relay() {
        let ends = relay();
        let mut header = message(REQ_SET_MEM_TABLE, FLAG_VERSION_1, &[]);
        header[8..12].copy_from_slice(&(MAX_BODY as u32 + 1).to_le_bytes());
        write_with_fd(&ends.front, &header, None);
        assert_closed(&ends.back, "backend");
        assert_closed(&ends.front, "frontend");
        let (inbound, outbound) = join(ends.threads);
        let err = inbound.expect_err("an error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(outbound.is_ok(), "{outbound:?}");
    }

    #[test]
    fn a_truncated_header_ends_the_relay() {
        let ends = relay();
        (&ends.front).write_all(&[18, 0, 0, 0, 1]).expect("send");
        ends.front
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        assert_closed(&ends.back, "backend");
        let (inbound, _) = join(ends.threads);
        let err = inbound.expect_err("an error");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[test]
    fn a_short_vring_enable_body_does_not_panic() {
        let ends = relay();
        write_with_fd(
            &ends.front,
            &message(REQ_SET_VRING_ENABLE, FLAG_VERSION_1, &[1]),
            None,
        );
        let features = message(REQ_SET_FEATURES, FLAG_VERSION_1, &[0; 8]);
        write_with_fd(&ends.front, &features, None);
        assert_eq!(read_bytes(&ends.back), features);
        let held = message(REQ_SET_VRING_ENABLE, FLAG_VERSION_1, &[1]);
        assert_eq!(read_bytes(&ends.back), held, "replayed as it came");
    }

    #[test]
    fn the_relay_ends_when_the_frontend_closes() {
        let ends = relay();
        drop(ends.front);
        assert_closed(&ends.back, "backend");
        let (inbound, outbound) = join(ends.threads);
        assert!(inbound.is_ok() && outbound.is_ok());
    }

    #[test]
    fn the_relay_ends_when_the_backend_closes() {
        let ends = relay();
        drop(ends.back);
        assert_closed(&ends.front, "frontend");
        let (inbound, outbound) = join(ends.threads);
        assert!(inbound.is_ok() && outbound.is_ok());
    }
}
