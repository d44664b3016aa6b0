//! One input, one connection: the stream written, the handler stack of the serve loop started
//! on the other end, the replies read, everything stopped, joined and closed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::guest_memory::GuestMemoryMmap;
use crate::guest_memory::Vring;
use vhost::vhost_user::message::FrontendReq;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::{decode, FdKind, Input, Message};
use crate::frontend_channel::FrontendChannel;
use crate::serve::BackendFactory;

/// A handler that neither answers nor closes for this long hangs: a bug, reported as a panic.
const HANG: Duration = Duration::from_secs(10);
/// A whole input taking this long (a worker that never stops, say) ends the process.
const WATCHDOG: Duration = Duration::from_secs(20);

const HEADER_LEN: usize = 12;
const FLAG_REPLY: u32 = 0x4;
/// The memfd behind every guest-RAM descriptor: the largest size a file can have (sparse).
const GUEST_FILE_SIZE: u64 = i64::MAX as u64 & !0xfff;

/// One reply the frontend read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u32,
    pub flags: u32,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as one u64 (GET_FEATURES, GET_QUEUE_NUM, a reply ack, ...).
    pub fn u64(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.body.as_slice().try_into().ok()?))
    }
}

/// What one input did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages written (through the relay, with the final GET_FEATURES).
    pub sent: usize,
    /// Replies read, in the order they came.
    pub replies: Vec<Reply>,
    /// Why the handler's connection ended, if not by the frontend hanging up.
    pub ended: Option<String>,
    /// Whether the connection outlived the stream: through the relay, the final GET_FEATURES
    /// was answered; straight, the handler saw the frontend hang up after the last message.
    pub completed: bool,
    /// Exit-event descriptors vhost-user-backend left open and the driver closed.
    pub swept: usize,
}

impl Outcome {
    /// The replies to request `code`.
    pub fn replies_to(&self, code: FrontendReq) -> Vec<&Reply> {
        let code = code as u32;
        self.replies.iter().filter(|r| r.code == code).collect()
    }
}

/// The serve loop's factory for a backend made beforehand.
struct OneBackend<B>(Option<B>);

impl<B> BackendFactory for OneBackend<B>
where
    B: VhostUserBackend<Bitmap = crate::guest_memory::BitmapMmapRegion, Vring = Vring>
        + Clone
        + 'static,
{
    type Backend = B;
    fn create(&mut self) -> io::Result<B> {
        self.0
            .take()
            .ok_or_else(|| io::Error::other("the backend was used already"))
    }
}

/// A fuzz target's end of a run: what the input did is dropped; a harness that could not set
/// up (descriptors, sockets, threads) panics, saying it was not the input's doing.
pub fn expect_set_up(run: io::Result<Outcome>) {
    if let Err(e) = run {
        panic!("the vhost-user harness could not set up (not the input's doing): {e}");
    }
}

/// Serve `data`'s message stream to `backend` on one connection (see the module
/// documentation). Panics only when the stack under test does: a panic in the handler's
/// thread, or a handler that neither answers nor closes within 10 s; a worker that cannot be
/// stopped within 20 s ends the process.
pub fn drive_messages<B>(backend: B, data: &[u8]) -> io::Result<Outcome>
where
    B: VhostUserBackend<Bitmap = crate::guest_memory::BitmapMmapRegion, Vring = Vring>
        + Clone
        + 'static,
{
    drive("vu-fuzz", OneBackend(Some(backend)), data)
}

/// [`drive_messages`] for a backend that needs the serve loop's hooks: `factory` makes the
/// device, attaches its extra event sources to the vring workers and hears of the connection,
/// as in [`serve`](crate::serve). An error is the harness failing to set up (descriptors,
/// sockets, threads), never the input's doing.
pub fn drive<F: BackendFactory>(name: &str, factory: F, data: &[u8]) -> io::Result<Outcome> {
    drive_with_ram(name, factory, data, GUEST_FILE_SIZE)
}

/// [`drive`] with a guest-RAM memfd of `ram_len` bytes instead of one as large as a file can
/// be: a region reaching past its end is what a frontend that lies about its memory sends
/// (the backend must refuse it before it reads a ring there and dies of SIGBUS).
pub fn drive_with_ram<F: BackendFactory>(
    name: &str,
    mut factory: F,
    data: &[u8],
    ram_len: u64,
) -> io::Result<Outcome> {
    static IGNORE_SIGPIPE: Once = Once::new();
    // SAFETY: setting a signal's disposition to SIG_IGN passes no memory; every Rust program
    // runs with SIGPIPE ignored (a fuzz target's C main does not), as the real backends do.
    IGNORE_SIGPIPE.call_once(|| unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    });
    let watch = Watch::start();
    let input = decode(data);
    let ram = memory_file(ram_len)?;

    // the serve loop's order: the device, its daemon (the vring workers start), attach, then
    // for the connection: accept, connected, start
    let backend = factory.create()?;
    let mut daemon = VhostUserDaemon::new(
        name.to_string(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let workers = daemon.get_epoll_handlers();
    let attached = factory.attach(&backend, &workers);
    drop(workers);
    let mut peers = Vec::new();
    let mut outcome = attached.and_then(|()| {
        let mut connection = Connection {
            daemon: &mut daemon,
            input: &input,
            ram: &ram,
            peers: &mut peers,
        };
        connection.serve(&mut factory, &backend)
    });
    // the frontend hung up when `serve` returned: the handler's thread ends (at once, or
    // after the relay saw it)
    watch.stage("waiting for the handler's thread to end");
    let ended = match daemon.wait() {
        Ok(()) | Err(vhost_user_backend::Error::HandleRequest(VhostUserError::Disconnected)) => {
            None
        }
        Err(vhost_user_backend::Error::WaitDaemon(panic)) => std::panic::resume_unwind(panic),
        Err(e) => Some(e.to_string()),
    };
    // dropping the daemon sends the exit events and joins the vring workers
    watch.stage("stopping the vring workers");
    drop(daemon);
    // vhost-user-backend 0.24 leaves each worker's exit event open (crate::worker)
    let swept = crate::worker::close_exit_events();
    drop(peers);
    if let Ok(o) = &mut outcome {
        if !input.through_relay() {
            o.completed = ended.is_none();
        }
        o.ended = ended;
        o.swept = swept;
    }
    outcome
}

/// One frontend connection to a daemon.
struct Connection<'a, B: VhostUserBackend> {
    daemon: &'a mut VhostUserDaemon<B>,
    input: &'a Input,
    ram: &'a File,
    /// The frontend's ends of the sockets it sent.
    peers: &'a mut Vec<UnixStream>,
}

impl<B> Connection<'_, B>
where
    B: VhostUserBackend<Bitmap = crate::guest_memory::BitmapMmapRegion, Vring = Vring>
        + Clone
        + 'static,
{
    /// Write the stream, start the handler (behind the relay or not), read the replies; the
    /// frontend's socket is closed on return.
    fn serve<F>(&mut self, factory: &mut F, backend: &B) -> io::Result<Outcome>
    where
        F: BackendFactory<Backend = B>,
    {
        let (mut listener, address) = listen()?;
        let relay = self.input.through_relay();
        let (mut frontend, relay_end) = if relay {
            let (ours, theirs) = UnixStream::pair()?;
            (ours, Some(theirs))
        } else {
            (UnixStream::connect_addr(&address)?, None)
        };
        let queued = self.queue(&mut frontend)?;
        let channel = FrontendChannel::default();
        factory.connected(backend, channel.clone());
        let mut fence = None;
        if let Some(relay_end) = relay_end {
            let handler_end = UnixStream::connect_addr(&address)?;
            self.start(&mut listener)?;
            let hooks = crate::relay::Hooks {
                channel,
                inflight: factory.inflight(backend),
                config_restore: factory.config_restore(backend),
            };
            crate::relay::spawn(relay_end, handler_end, hooks)?;
            // the end of the stream: a GET_FEATURES, written now that the relay reads
            let get_features = Message::new(FrontendReq::GET_FEATURES, []);
            match self.write(&mut frontend, &get_features, true) {
                Ok(()) => {
                    let asked = self.input.messages[..queued]
                        .iter()
                        .filter(|m| m.code == FrontendReq::GET_FEATURES as u32)
                        .count();
                    fence = Some(asked + 1);
                }
                // the relay ended the connection already
                Err(e) if is_hang_up(&e) => {}
                Err(e) => return Err(e),
            }
        } else {
            frontend.shutdown(std::net::Shutdown::Write)?;
            self.start(&mut listener)?;
        }
        let (replies, fenced) = read_replies(&mut frontend, fence)?;
        Ok(Outcome {
            sent: queued + usize::from(fence.is_some()),
            replies,
            completed: fenced,
            ..Outcome::default()
        })
    }

    fn start(&mut self, listener: &mut Listener) -> io::Result<()> {
        self.daemon
            .start(listener)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Write the input's messages before anyone reads them; returns how many went out whole
    /// (the rest did not fit in the socket's buffer, which the limits keep from happening).
    fn queue(&mut self, frontend: &mut UnixStream) -> io::Result<usize> {
        frontend.set_nonblocking(true)?;
        let mut sent = 0;
        for m in &self.input.messages {
            match self.write(frontend, m, self.input.through_relay()) {
                Ok(()) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        frontend.set_nonblocking(false)?;
        Ok(sent)
    }

    /// One message with its descriptors. `framed`: the header's size frames what is written
    /// (the body cut or zero-padded to it), as the relay needs; otherwise the payload goes as
    /// it is.
    fn write(&mut self, frontend: &mut UnixStream, m: &Message, framed: bool) -> io::Result<()> {
        let declared = m.declared.map_or(m.payload.len(), usize::from);
        let mut body = m.payload.clone();
        if framed && declared <= vhost::vhost_user::message::MAX_MSG_SIZE {
            body.resize(declared, 0);
        }
        let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
        bytes.extend_from_slice(&m.code.to_le_bytes());
        bytes.extend_from_slice(&u32::from(m.flags ^ 1).to_le_bytes());
        bytes.extend_from_slice(&(declared as u32).to_le_bytes());
        bytes.extend_from_slice(&body);

        // the descriptors stay open here until the kernel holds its own references
        let (kind, count) = m.descriptors();
        let mut events = Vec::new();
        let mut sockets = Vec::new();
        let mut fds: Vec<RawFd> = Vec::with_capacity(count);
        for _ in 0..count {
            match kind {
                FdKind::Memory | FdKind::Natural => fds.push(self.ram.as_raw_fd()),
                FdKind::Event => {
                    let e = EventFd::new(EFD_NONBLOCK)?;
                    fds.push(e.as_raw_fd());
                    events.push(e);
                }
                FdKind::Socket => {
                    let (give, keep) = UnixStream::pair()?;
                    fds.push(give.as_raw_fd());
                    sockets.push(give);
                    self.peers.push(keep);
                }
            }
        }
        let sent = frontend
            .send_with_fds(&[&bytes[..]], &fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // the descriptors went with the first byte; the rest is plain data
        frontend.write_all(&bytes[sent..])
    }
}

/// The watch over one input: a stack that hangs (a vring worker that never leaves its loop
/// cannot be joined) ends the process after [`WATCHDOG`], saying where it hung, so that a
/// fuzzer keeps the input and a test run stops instead of hanging.
struct Watch {
    id: u64,
}

/// Inputs being run: when each started, and what the driver was doing.
static WATCHES: Mutex<BTreeMap<u64, (Instant, &'static str)>> = Mutex::new(BTreeMap::new());

impl Watch {
    fn start() -> Watch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static WATCHDOG_THREAD: Once = Once::new();
        WATCHDOG_THREAD.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("vu-fuzz-watchdog".into())
                .spawn(watchdog);
            if let Err(e) = spawned {
                eprintln!("vhost-user fuzz harness: no watchdog ({e}): a hang will hang");
            }
        });
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut watches = WATCHES.lock().unwrap_or_else(|e| e.into_inner());
        watches.insert(id, (Instant::now(), "serving the stream"));
        Watch { id }
    }

    fn stage(&self, what: &'static str) {
        let mut watches = WATCHES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = watches.get_mut(&self.id) {
            w.1 = what;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watches = WATCHES.lock().unwrap_or_else(|e| e.into_inner());
        watches.remove(&self.id);
    }
}

fn watchdog() {
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let watches = WATCHES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, what)) = watches.values().find(|(at, _)| at.elapsed() > WATCHDOG) {
            eprintln!(
                "vhost-user fuzz harness: the stack under test hung for {WATCHDOG:?} while \
                 {what}: a bug in it (a worker or handler that never returns)"
            );
            std::process::abort();
        }
    }
}

/// A listening socket with a fresh abstract name (nothing on the file system).
fn listen() -> io::Result<(Listener, SocketAddr)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "splitvisor-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let address = SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = UnixListener::bind_addr(&address)?;
    Ok((Listener::from(listener), address))
}

/// Read replies until the handler closes, or until `fence` answers to GET_FEATURES came (then
/// true). Panics when the handler does neither within [`HANG`].
fn read_replies(frontend: &mut UnixStream, fence: Option<usize>) -> io::Result<(Vec<Reply>, bool)> {
    frontend.set_read_timeout(Some(HANG))?;
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut features = 0;
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= HEADER_LEN {
            let word =
                |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            let (code, flags, size) = (word(0), word(4), word(8) as usize);
            if buf.len() < HEADER_LEN + size {
                break;
            }
            let body = buf[HEADER_LEN..HEADER_LEN + size].to_vec();
            buf.drain(..HEADER_LEN + size);
            if code == FrontendReq::GET_FEATURES as u32 && flags & FLAG_REPLY != 0 {
                features += 1;
            }
            replies.push(Reply { code, flags, body });
        }
        if fence.is_some_and(|f| features >= f) {
            return Ok((replies, true));
        }
        match frontend.read(&mut chunk) {
            Ok(0) => return Ok((replies, false)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the vhost-user handler neither answered nor closed the connection within \
                     {HANG:?} ({} replies so far): it hangs",
                    replies.len()
                )
            }
            Err(e) if is_hang_up(&e) => return Ok((replies, false)),
            Err(e) => return Err(e),
        }
    }
}

/// The other end closed: an end like any other.
fn is_hang_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// A memfd of `len` bytes (sparse: zero and free until written), e.g. a disk image.
pub fn memory_file(len: u64) -> io::Result<File> {
    crate::inflight::region::memfd(c"splitvisor-fuzz", len)
}

/// This process's threads and open descriptors, for leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub threads: usize,
    pub fds: usize,
}

impl Footprint {
    pub fn now() -> Footprint {
        let count = |dir| std::fs::read_dir(dir).map_or(0, Iterator::count);
        Footprint {
            threads: count("/proc/self/task"),
            fds: count("/proc/self/fd"),
        }
    }

    /// The footprint once threads that are ending (the relay's) are gone: waits up to 5 s for
    /// the count to come back to `self`'s.
    pub fn settled_after(&self) -> Footprint {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = Footprint::now();
            if now.threads <= self.threads || std::time::Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
