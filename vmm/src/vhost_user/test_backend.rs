//! A scripted vhost-user backend for the frontend's unit tests: it answers only what the
//! frontend asks of a backend without protocol features (GET_FEATURES, GET_PROTOCOL_FEATURES,
//! GET_VRING_BASE with 100 + index), records every message, and hands the test its end of the
//! connection so that the test can "kill" it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::config::{ByteSize, MemoryConfig};
use crate::memory::GuestRam;
use crate::virtio::QueueSetup;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const GET_QUEUE_NUM: u32 = 17;
/// VHOST_USER_PROTOCOL_F_MQ.
const PROTOCOL_F_MQ: u64 = 1 << 0;
/// Reply flags: version 1 | REPLY.
const REPLY: u32 = 0x5;

/// Every message the backend got: (request, payload).
pub type Log = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;

pub struct ScriptedBackend {
    pub path: PathBuf,
    pub log: Log,
    /// The backend's end of the connection, once the frontend connected.
    pub conn: mpsc::Receiver<UnixStream>,
    pub thread: JoinHandle<()>,
}

fn reply(stream: &mut UnixStream, request: u32, payload: &[u8]) {
    let mut msg = Vec::new();
    for word in [request, REPLY, payload.len() as u32] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    msg.extend_from_slice(payload);
    let _ = stream.write_all(&msg);
}

/// Listen on a fresh path (`tag` names it) and serve one connection offering `features`.
pub fn start(tag: &str, features: u64) -> ScriptedBackend {
    serve(tag, features, 0, 0)
}

/// [`start`], also offering the MQ protocol feature and answering GET_QUEUE_NUM with
/// `queue_num` (`features` must include VHOST_USER_F_PROTOCOL_FEATURES).
pub fn start_mq(tag: &str, features: u64, queue_num: u64) -> ScriptedBackend {
    serve(tag, features, PROTOCOL_F_MQ, queue_num)
}

fn serve(tag: &str, features: u64, protocol: u64, queue_num: u64) -> ScriptedBackend {
    let path = std::env::temp_dir().join(format!("vmm-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let log: Log = Arc::default();
    let (tx, conn) = mpsc::channel();
    let record = log.clone();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = tx.send(stream.try_clone().unwrap());
        loop {
            let mut header = [0u8; 12];
            if stream.read_exact(&mut header).is_err() {
                return; // the frontend went away, or the test killed us
            }
            let word = |i: usize| u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().unwrap());
            let mut payload = vec![0u8; word(2) as usize];
            if stream.read_exact(&mut payload).is_err() {
                return;
            }
            let request = word(0);
            record.lock().unwrap().push((request, payload.clone()));
            match request {
                GET_FEATURES => reply(&mut stream, request, &features.to_le_bytes()),
                GET_PROTOCOL_FEATURES => reply(&mut stream, request, &protocol.to_le_bytes()),
                GET_QUEUE_NUM => reply(&mut stream, request, &queue_num.to_le_bytes()),
                GET_VRING_BASE => {
                    let index = u32::from_le_bytes(payload[..4].try_into().unwrap());
                    let mut state = index.to_le_bytes().to_vec();
                    state.extend_from_slice(&(100 + index).to_le_bytes());
                    reply(&mut stream, request, &state);
                }
                _ => {}
            }
        }
    });
    ScriptedBackend {
        path,
        log,
        conn,
        thread,
    }
}

impl ScriptedBackend {
    /// Wait (at most 5 s) until it has read `n` messages of type `request`: the frontend does
    /// not wait for messages that have no reply.
    pub fn wait_for(&self, request: u32, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.messages(request).len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The (index, value) of every SET_VRING_BASE it got.
    pub fn vring_bases(&self) -> Vec<(u32, u32)> {
        self.messages(SET_VRING_BASE)
            .iter()
            .map(|p| {
                let w = |i: usize| u32::from_le_bytes(p[i * 4..i * 4 + 4].try_into().unwrap());
                (w(0), w(1))
            })
            .collect()
    }

    /// The payloads of every message of type `request`.
    pub fn messages(&self, request: u32) -> Vec<Vec<u8>> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(r, _)| *r == request)
            .map(|(_, p)| p.clone())
            .collect()
    }
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
        hugepages: false,
        mergeable: false,
    })
    .unwrap()
}
