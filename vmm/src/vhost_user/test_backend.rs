//! A scripted vhost-user backend for the frontend's unit tests. It answers what the frontend
//! asks of a backend (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS,
//! GET_CONFIG from a config space SET_CONFIG writes, GET_VRING_BASE with 100 + index,
//! GET_INFLIGHT_FD with a memfd it creates, and an ack to any message that asks for one),
//! records every message with the descriptors that came with it, can play hung on one request,
//! and hands the test its end of the connection so that the test can "kill" it. A second
//! backend started with the same tag listens on the same path, as a restarted backend process
//! would.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::VhostUserDevice;
use crate::config::{ByteSize, MemoryConfig};
use crate::memory::GuestRam;
use crate::pci::PciDevice;
use crate::virtio::device_type::QueueUnits;
use crate::virtio::pci::VirtioPciDevice;
use crate::virtio::QueueSetup;
use crate::virtio::TYPE_BLOCK;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;
pub const SET_BACKEND_REQ_FD: u32 = 21;
pub const GET_CONFIG: u32 = 24;
pub const SET_CONFIG: u32 = 25;
pub const GET_INFLIGHT_FD: u32 = 31;
pub const SET_INFLIGHT_FD: u32 = 32;
pub const GET_MAX_MEM_SLOTS: u32 = 36;
pub const ADD_MEM_REG: u32 = 37;

/// What the frontend sends to start one ring, in order.
pub const RING_SETUP: [u32; 6] = [
    SET_VRING_NUM,
    SET_VRING_ADDR,
    SET_VRING_BASE,
    SET_VRING_CALL,
    SET_VRING_KICK,
    SET_VRING_ENABLE,
];

pub const PROTOCOL_F_MQ: u64 = 1 << 0;
pub const PROTOCOL_F_LOG_SHMFD: u64 = 1 << 1;
/// One the vmm does not use (VHOST_USER_PROTOCOL_F_HOST_NOTIFIER).
pub const PROTOCOL_F_HOST_NOTIFIER: u64 = 1 << 11;
pub const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;
pub const PROTOCOL_F_BACKEND_REQ: u64 = 1 << 5;
pub const PROTOCOL_F_CONFIG: u64 = 1 << 9;
pub const PROTOCOL_F_INFLIGHT_SHMFD: u64 = 1 << 12;
pub const PROTOCOL_F_CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
/// Reply flags: version 1 | REPLY.
const REPLY: u32 = 0x5;
/// The header flag asking for a REPLY_ACK.
pub const NEED_REPLY: u32 = 0x8;
/// SET_CONFIG's flags: a driver's write (the spec's VHOST_SET_CONFIG_TYPE_FRONTEND), and a
/// restored space (the vhost crate's LIVE_MIGRATION bit).
pub const CONFIG_FRONTEND: u32 = 0;
pub const CONFIG_LIVE_MIGRATION: u32 = 0x2;

/// One message the backend got.
pub struct Msg {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    /// The descriptors that came with it (SCM_RIGHTS).
    pub fds: Vec<File>,
}

/// Every message the backend got, in order.
pub type Log = Arc<Mutex<Vec<Msg>>>;

/// What a scripted backend offers and how it behaves.
#[derive(Clone, Default)]
pub struct Script {
    /// GET_FEATURES.
    pub features: u64,
    /// GET_PROTOCOL_FEATURES.
    pub protocol: u64,
    /// GET_QUEUE_NUM.
    pub queue_num: u64,
    /// GET_MAX_MEM_SLOTS.
    pub max_mem_slots: u64,
    /// The config space GET_CONFIG reads and SET_CONFIG writes. A GET_CONFIG beyond it (or on
    /// an empty one) fails the way the spec says: a reply of size 0.
    pub config: Arc<Mutex<Vec<u8>>>,
    /// A request the backend reads and never answers, like a hung backend.
    pub hang_on: Arc<Mutex<Option<u32>>>,
    /// The mmap_size GET_INFLIGHT_FD answers (the shape echoes the request's, the offset is
    /// 0), with a new memfd of that size.
    pub inflight_size: u64,
    /// A duplicate of each memfd GET_INFLIGHT_FD handed out, in order.
    pub inflight_regions: Arc<Mutex<Vec<File>>>,
    /// Refuse a SET_CONFIG flagged LIVE_MIGRATION (a restore): the space is left as it is,
    /// and the ack (if asked for) says 1.
    pub refuse_restore: bool,
}

impl Script {
    /// A backend offering `features` and no protocol feature.
    pub fn new(features: u64) -> Script {
        Script {
            features,
            ..Script::default()
        }
    }

    /// The backend's config space is `bytes`.
    pub fn with_config(self, bytes: &[u8]) -> Script {
        *self.config.lock().unwrap() = bytes.to_vec();
        self
    }

    /// The reply's payload to `msg`, if it gets one.
    fn answer(&self, msg: &Msg) -> Option<Vec<u8>> {
        if *self.hang_on.lock().unwrap() == Some(msg.request) {
            return None;
        }
        let word = |i: usize| u32::from_le_bytes(msg.payload[i * 4..i * 4 + 4].try_into().unwrap());
        match msg.request {
            GET_FEATURES => Some(self.features.to_le_bytes().to_vec()),
            GET_PROTOCOL_FEATURES => Some(self.protocol.to_le_bytes().to_vec()),
            GET_QUEUE_NUM => Some(self.queue_num.to_le_bytes().to_vec()),
            GET_MAX_MEM_SLOTS => Some(self.max_mem_slots.to_le_bytes().to_vec()),
            GET_VRING_BASE => {
                let mut state = word(0).to_le_bytes().to_vec();
                state.extend_from_slice(&(100 + word(0)).to_le_bytes());
                Some(state)
            }
            GET_CONFIG => {
                let (offset, size, flags) = (word(0) as usize, word(1) as usize, word(2));
                let config = self.config.lock().unwrap();
                let data = config.get(offset..offset + size).filter(|d| !d.is_empty());
                let answered = if data.is_some() { size as u32 } else { 0 };
                let mut reply = Vec::new();
                for w in [offset as u32, answered, flags] {
                    reply.extend_from_slice(&w.to_le_bytes());
                }
                reply.extend_from_slice(data.unwrap_or(&vec![0; size]));
                Some(reply)
            }
            SET_CONFIG => {
                let (offset, size) = (word(0) as usize, word(1) as usize);
                let refused = self.refuse_restore && word(2) & CONFIG_LIVE_MIGRATION != 0;
                let mut config = self.config.lock().unwrap();
                if let Some(dst) = config.get_mut(offset..offset + size).filter(|_| !refused) {
                    dst.copy_from_slice(&msg.payload[12..12 + size]);
                }
                let status = u64::from(refused);
                (msg.flags & NEED_REPLY != 0).then(|| status.to_le_bytes().to_vec())
            }
            GET_INFLIGHT_FD => {
                // VhostUserInflight: mmap_size, mmap_offset, num_queues and queue_size as
                // asked, padded to 24 bytes (its C size)
                let mut reply = self.inflight_size.to_le_bytes().to_vec();
                reply.extend_from_slice(&0u64.to_le_bytes());
                reply.extend_from_slice(&msg.payload[16..20]);
                reply.extend_from_slice(&[0; 4]);
                Some(reply)
            }
            _ => (msg.flags & NEED_REPLY != 0).then(|| 0u64.to_le_bytes().to_vec()),
        }
    }

    /// The descriptor the reply to `request` carries: for GET_INFLIGHT_FD a new memfd of
    /// `inflight_size` bytes, recorded in `inflight_regions`.
    fn answer_fd(&self, request: u32) -> Option<File> {
        if request != GET_INFLIGHT_FD {
            return None;
        }
        // SAFETY: a NUL-terminated name that outlives the call; the result is checked.
        let fd = unsafe { libc::memfd_create(c"inflight".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(self.inflight_size).unwrap();
        let mut regions = self.inflight_regions.lock().unwrap();
        regions.push(file.try_clone().unwrap());
        Some(file)
    }
}

pub struct ScriptedBackend {
    pub path: PathBuf,
    pub log: Log,
    /// The backend's end of the connection, once the frontend connected.
    pub conn: mpsc::Receiver<UnixStream>,
    pub thread: JoinHandle<()>,
    pub script: Script,
}

fn reply(stream: &mut UnixStream, request: u32, payload: &[u8], fd: Option<&File>) {
    let mut msg = Vec::new();
    for word in [request, REPLY, payload.len() as u32] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    msg.extend_from_slice(payload);
    match fd {
        // the descriptor comes with the message's first bytes, in one sendmsg
        Some(f) => drop(stream.send_with_fd(&msg[..], f.as_raw_fd())),
        None => drop(stream.write_all(&msg)),
    }
}

/// The next message on `stream` with its descriptors; `None` once the frontend is gone.
fn read_msg(stream: &mut UnixStream) -> Option<Msg> {
    let mut header = [0u8; 12];
    let mut raw: [RawFd; 8] = [-1; 8];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: header.len(),
    }];
    // SAFETY: the iovec points into `header`, which outlives the call and takes any bytes.
    let (n, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut raw) }.ok()?;
    let fds = raw[..nfds]
        .iter()
        // SAFETY: recvmsg made each of these descriptors ours; each is wrapped once.
        .map(|fd| unsafe { File::from_raw_fd(*fd) })
        .collect();
    if n == 0 {
        return None;
    }
    stream.read_exact(&mut header[n..]).ok()?;
    let word = |i: usize| u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().unwrap());
    let mut payload = vec![0u8; word(2) as usize];
    stream.read_exact(&mut payload).ok()?;
    Some(Msg {
        request: word(0),
        flags: word(1),
        payload,
        fds,
    })
}

/// The socket path of the backend `tag` names.
pub fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-{tag}-{}.sock", std::process::id()))
}

/// Listen on a fresh path (`tag` names it) and serve one connection offering `features`.
pub fn start(tag: &str, features: u64) -> ScriptedBackend {
    start_with(tag, Script::new(features))
}

/// [`start`], also offering the MQ protocol feature and answering GET_QUEUE_NUM with
/// `queue_num` (`features` must include VHOST_USER_F_PROTOCOL_FEATURES).
pub fn start_mq(tag: &str, features: u64, queue_num: u64) -> ScriptedBackend {
    start_with(
        tag,
        Script {
            protocol: PROTOCOL_F_MQ,
            queue_num,
            ..Script::new(features)
        },
    )
}

/// Listen on `tag`'s path (replacing whatever socket was there) and serve one connection as
/// `script` says.
pub fn start_with(tag: &str, script: Script) -> ScriptedBackend {
    let path = socket_path(tag);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let log: Log = Arc::default();
    let (tx, conn) = mpsc::channel();
    let (record, answers) = (log.clone(), script.clone());
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = tx.send(stream.try_clone().unwrap());
        // the frontend went away, or the test killed us
        while let Some(msg) = read_msg(&mut stream) {
            let (request, answer) = (msg.request, answers.answer(&msg));
            record.lock().unwrap().push(msg);
            if let Some(payload) = answer {
                let fd = answers.answer_fd(request);
                reply(&mut stream, request, &payload, fd.as_ref());
            }
        }
    });
    ScriptedBackend {
        path,
        log,
        conn,
        thread,
        script,
    }
}

impl ScriptedBackend {
    /// Wait (at most 5 s) until it has read `n` messages of type `request`: the frontend does
    /// not wait for messages that have no reply.
    pub fn wait_for(&self, request: u32, n: usize) {
        wait_until(&format!("{n} messages {request}"), || {
            self.messages(request).len() >= n
        });
    }

    /// The (index, value) of every SET_VRING_BASE it got.
    pub fn vring_bases(&self) -> Vec<(u32, u32)> {
        self.messages(SET_VRING_BASE)
            .iter()
            .map(|p| (u32_at(p, 0), u32_at(p, 4)))
            .collect()
    }

    /// The payloads of every message of type `request`.
    pub fn messages(&self, request: u32) -> Vec<Vec<u8>> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|m| m.request == request)
            .map(|m| m.payload.clone())
            .collect()
    }

    /// The header flags of every message of type `request`.
    pub fn flags(&self, request: u32) -> Vec<u32> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|m| m.request == request)
            .map(|m| m.flags)
            .collect()
    }

    /// The request of every message, in the order it came.
    pub fn requests(&self) -> Vec<u32> {
        self.log.lock().unwrap().iter().map(|m| m.request).collect()
    }

    /// Duplicates of the descriptors of every message of type `request`.
    pub fn fds(&self, request: u32) -> Vec<Vec<File>> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|m| m.request == request)
            .map(|m| m.fds.iter().map(|f| f.try_clone().unwrap()).collect())
            .collect()
    }

    /// Its end of the channel SET_BACKEND_REQ_FD gave it.
    pub fn backend_channel(&self) -> UnixStream {
        self.wait_for(SET_BACKEND_REQ_FD, 1);
        let mut fds = self.fds(SET_BACKEND_REQ_FD);
        assert_eq!(fds.len(), 1, "one SET_BACKEND_REQ_FD");
        let fd = fds
            .remove(0)
            .pop()
            .expect("SET_BACKEND_REQ_FD without a descriptor");
        UnixStream::from(std::os::fd::OwnedFd::from(fd))
    }

    /// From now on, read `request` and never answer it.
    pub fn hang_on(&self, request: u32) {
        *self.script.hang_on.lock().unwrap() = Some(request);
    }

    /// The backend dies: its end of the connection closes and its thread ends.
    pub fn kill(&self) {
        self.conn.recv().unwrap().shutdown(Shutdown::Both).unwrap();
        self.wait_closed();
    }

    /// Wait until the connection is closed (by either end) and the backend's thread ended.
    pub fn wait_closed(&self) {
        wait_until("the backend's connection to close", || {
            self.thread.is_finished()
        });
    }
}

/// The little-endian u32 at `at` in `bytes`.
pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// The little-endian u64 at `at` in `bytes`.
pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Wait until `cond` holds; panic naming `what` if it does not within 5 s.
pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// CONFIG_CHANGE_MSG as the vhost-user spec lays it out, built by hand: request 2, version 1
/// with `flags`, no payload.
pub fn config_change_msg(flags: u32) -> [u8; 12] {
    let mut msg = [0u8; 12];
    msg[..4].copy_from_slice(&2u32.to_le_bytes());
    msg[4..8].copy_from_slice(&(0x1 | flags).to_le_bytes());
    msg
}

/// A blk device (`queues` request queues) on the backend.
pub fn blk(backend: &ScriptedBackend, queues: u16, ram: &GuestRam) -> VhostUserDevice {
    VhostUserDevice::connect(
        "blk0",
        &backend.path,
        TYPE_BLOCK,
        QueueUnits(queues),
        128,
        ram.memory().clone(),
    )
    .unwrap()
}

/// Whether the transport's ISR has the configuration-change bit (reading acknowledges it).
pub fn config_interrupt(transport: &Mutex<VirtioPciDevice>) -> bool {
    let mut isr = [0u8];
    transport.lock().unwrap().bar_read(0, 0x1000, &mut isr);
    isr[0] & 2 != 0
}

/// Kick and call eventfds for two queues, and their setups at fixed ring addresses (the used
/// ring of queue `i` at [`Rings::USED`]`[i]`).
pub struct Rings {
    pub fds: Vec<(EventFd, EventFd)>,
}

impl Rings {
    pub const USED: [u64; 2] = [0x10_8000, 0x11_8000];

    pub fn new() -> Rings {
        let fd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Rings {
            fds: (0..2).map(|_| (fd(), fd())).collect(),
        }
    }

    /// Both queues, 64 entries each.
    pub fn setups(&self) -> Vec<QueueSetup<'_>> {
        self.fds
            .iter()
            .enumerate()
            .map(|(index, (kick, call))| QueueSetup {
                index,
                size: 64,
                desc: 0x10_0000 + index as u64 * 0x1_0000,
                avail: 0x10_4000 + index as u64 * 0x1_0000,
                used: Self::USED[index],
                kick,
                call,
            })
            .collect()
    }
}

/// 64 MiB of guest RAM (a memfd, as the vmm's).
pub fn guest_ram() -> GuestRam {
    GuestRam::new(&MemoryConfig {
        size: ByteSize(64 << 20),
        ..MemoryConfig::default()
    })
    .unwrap()
}

/// A net device (one pair: rx, tx) with queues of `queue_size`, connected to `backend`.
pub fn net_device(
    backend: &ScriptedBackend,
    ram: &GuestRam,
    queue_size: u16,
) -> super::VhostUserDevice {
    super::VhostUserDevice::connect(
        "net0",
        &backend.path,
        crate::virtio::TYPE_NET,
        crate::virtio::device_type::QueueUnits(1),
        queue_size,
        ram.memory().clone(),
    )
    .unwrap()
}
