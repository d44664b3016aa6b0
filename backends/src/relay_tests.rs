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
    relay_with_hooks(Hooks {
        channel,
        ..Hooks::default()
    })
}

fn relay_with_hooks(hooks: Hooks) -> Ends {
    let (front, front_relay) = UnixStream::pair().expect("socketpair");
    let (back_relay, back) = UnixStream::pair().expect("socketpair");
    for s in [&front, &back] {
        s.set_read_timeout(Some(LIMIT)).expect("timeout");
    }
    let threads = start(front_relay, back_relay, hooks).expect("relay");
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
    negotiate_reply_ack(front, back);

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

#[test]
fn inflight_messages_are_answered_by_the_relay_for_a_tracking_device() {
    use crate::inflight::messages::{InflightInfo, REQ_GET_INFLIGHT_FD, REQ_SET_INFLIGHT_FD};
    let slot = crate::inflight::InflightSlot::new(2);
    let ends = relay_with_hooks(Hooks {
        inflight: Some(slot.clone()),
        ..Hooks::default()
    });
    let (front, back) = (&ends.front, &ends.back);
    negotiate_reply_ack(front, back);

    let asked = InflightInfo {
        num_queues: 2,
        queue_size: 64,
        ..Default::default()
    };
    write_with_fd(
        front,
        &message(REQ_GET_INFLIGHT_FD, FLAG_VERSION_1, &asked.to_bytes()),
        None,
    );
    let (reply, file) = read_message(front);
    assert_eq!(u32_at(&reply, 0), REQ_GET_INFLIGHT_FD);
    assert_eq!(u32_at(&reply, 4), FLAG_VERSION_1 | FLAG_REPLY);
    let info = InflightInfo::parse(&reply[HEADER_LEN..]).expect("body");
    assert_eq!((info.num_queues, info.queue_size), (2, 64));
    let file = file.expect("the memfd");
    assert_eq!(file.metadata().expect("len").len(), info.mmap_size);

    let set = message(
        REQ_SET_INFLIGHT_FD,
        FLAG_VERSION_1 | FLAG_NEED_REPLY,
        &info.to_bytes(),
    );
    write_with_fd(front, &set, Some(file.as_raw_fd()));
    let ack = message(REQ_SET_INFLIGHT_FD, FLAG_VERSION_1 | FLAG_REPLY, &[0; 8]);
    assert_eq!(read_bytes(front), ack, "acknowledged: success");
    assert!(slot.newer_than(0).is_some(), "the device has the region");

    // a SET the device cannot use: acked with a failure
    let bad = message(
        REQ_SET_INFLIGHT_FD,
        FLAG_VERSION_1 | FLAG_NEED_REPLY,
        &[0; 24],
    );
    write_with_fd(front, &bad, Some(file.as_raw_fd()));
    let mut nack = message(REQ_SET_INFLIGHT_FD, FLAG_VERSION_1 | FLAG_REPLY, &[0; 8]);
    nack[HEADER_LEN] = 1;
    assert_eq!(read_bytes(front), nack);

    // none of it reached the handler: the next thing it reads is the next message
    let plain = message(REQ_GET_FEATURES, FLAG_VERSION_1, &[]);
    write_with_fd(front, &plain, None);
    assert_eq!(read_bytes(back), plain);
}

#[test]
fn inflight_messages_pass_through_for_a_device_that_does_not_track() {
    let ends = relay();
    let get = message(31, FLAG_VERSION_1, &[0; 24]);
    write_with_fd(&ends.front, &get, None);
    assert_eq!(
        read_bytes(&ends.back),
        get,
        "left to the handler, which refuses it"
    );
}

/// A SET_CONFIG body: offset, size (of `payload`, or `size` when given), flags, payload.
fn config_body(offset: u32, flags: u32, payload: &[u8], size: Option<u32>) -> Vec<u8> {
    let size = size.unwrap_or(payload.len() as u32);
    [offset, size, flags]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .chain(payload.iter().copied())
        .collect()
}

const CONFIG_F_WRITABLE: u32 = 0x1;

/// What a config restore hook was given: offset and bytes.
type Restored = (u32, Vec<u8>);

/// The frontend negotiated REPLY_ACK (the handler saw it too).
fn negotiate_reply_ack(front: &UnixStream, back: &UnixStream) {
    let protocol = message(
        REQ_SET_PROTOCOL_FEATURES,
        FLAG_VERSION_1,
        &PROTOCOL_F_REPLY_ACK.to_le_bytes(),
    );
    write_with_fd(front, &protocol, None);
    assert_eq!(read_bytes(back), protocol);
}

/// The ack the relay gives a SET_CONFIG: `status` 0 taken, 1 refused.
fn config_ack(status: u8) -> Vec<u8> {
    let mut ack = message(REQ_SET_CONFIG, FLAG_VERSION_1 | FLAG_REPLY, &[0; 8]);
    ack[HEADER_LEN] = status;
    ack
}

#[test]
fn a_restored_config_space_goes_to_the_hook_never_to_the_handler() {
    let taken: Arc<Mutex<Vec<Restored>>> = Arc::default();
    let record = taken.clone();
    let ends = relay_with_hooks(Hooks {
        config_restore: Some(Arc::new(move |offset, bytes: &[u8]| {
            if offset >= 8 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "past the space",
                ));
            }
            record.lock().expect("lock").push((offset, bytes.to_vec()));
            Ok(())
        })),
        ..Hooks::default()
    });
    let (front, back) = (&ends.front, &ends.back);
    negotiate_reply_ack(front, back);
    let restore = CONFIG_F_LIVE_MIGRATION;
    let asks = FLAG_VERSION_1 | FLAG_NEED_REPLY;

    let space = [1, 0, 3, 0, 2, 0, 0, 0];
    let body = config_body(0, restore, &space, None);
    write_with_fd(front, &message(REQ_SET_CONFIG, asks, &body), None);
    assert_eq!(read_bytes(front), config_ack(0), "taken");
    assert_eq!(*taken.lock().expect("lock"), vec![(0, space.to_vec())]);

    // the hook refuses one; one that says it is longer than it is never reaches the hook
    let body = config_body(8, restore, &[9; 4], None);
    write_with_fd(front, &message(REQ_SET_CONFIG, asks, &body), None);
    assert_eq!(read_bytes(front), config_ack(1), "refused by the device");
    let body = config_body(4, restore, &[9; 4], Some(8));
    write_with_fd(front, &message(REQ_SET_CONFIG, asks, &body), None);
    assert_eq!(read_bytes(front), config_ack(1), "a short payload");
    // without NEED_REPLY: taken, no ack
    let body = config_body(4, restore | CONFIG_F_WRITABLE, &[7; 4], None);
    write_with_fd(front, &message(REQ_SET_CONFIG, FLAG_VERSION_1, &body), None);

    // a driver's write passes through as sent, to the handler, which acks it
    let write = message(
        REQ_SET_CONFIG,
        asks,
        &config_body(4, CONFIG_F_WRITABLE, &[5, 0, 0, 0], None),
    );
    write_with_fd(front, &write, None);
    assert_eq!(read_bytes(back), write, "the first thing the handler sees");
    assert_eq!(taken.lock().expect("lock")[1], (4, vec![7; 4]));
    let handler_ack = config_ack(0);
    write_with_fd(back, &handler_ack, None);
    assert_eq!(read_bytes(front), handler_ack, "the only ack since");
}

#[test]
fn a_restored_config_space_without_a_hook_is_acked_and_dropped() {
    let ends = relay();
    let (front, back) = (&ends.front, &ends.back);
    let body = config_body(0, CONFIG_F_LIVE_MIGRATION, &[1; 8], None);
    // before REPLY_ACK: no ack even when asked
    let asks = FLAG_VERSION_1 | FLAG_NEED_REPLY;
    write_with_fd(front, &message(REQ_SET_CONFIG, asks, &body), None);
    // a body too short to have flags is not a restore: passed on (the handler refuses it)
    let short = message(REQ_SET_CONFIG, FLAG_VERSION_1, &[0; 10]);
    write_with_fd(front, &short, None);
    assert_eq!(read_bytes(back), short, "the handler's first message");
    let reply = message(REQ_GET_FEATURES, FLAG_VERSION_1 | FLAG_REPLY, &[1; 8]);
    write_with_fd(back, &reply, None);
    assert_eq!(read_bytes(front), reply, "no ack came before it");

    negotiate_reply_ack(front, back);
    write_with_fd(front, &message(REQ_SET_CONFIG, asks, &body), None);
    assert_eq!(
        read_bytes(front),
        config_ack(0),
        "acked: nothing to restore"
    );
    let plain = message(REQ_GET_FEATURES, FLAG_VERSION_1, &[]);
    write_with_fd(front, &plain, None);
    assert_eq!(
        read_bytes(back),
        plain,
        "the restore never reached the handler"
    );
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
