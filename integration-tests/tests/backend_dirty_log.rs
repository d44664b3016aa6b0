//! Every backend logs its writes to guest memory in the dirty-page log a migrating vmm hands
//! it (VHOST_F_LOG_ALL with VHOST_USER_PROTOCOL_F_LOG_SHMFD: a memfd given with SET_LOG_BASE,
//! one bit per 4 KiB guest page, bit `page % 8` of byte `page / 8`), on each of its write
//! paths, against the real processes (no VM, no KVM):
//!
//! - splitvisor-blk: a read lands in the guest's buffer by io_uring or `preadv`, which
//!   vm-memory never sees, so the backend logs the data pages by hand
//!   (`GuestIovecs::mark_written`); the status byte and the used ring go through vm-memory.
//! - splitvisor-net: a frame the tap hands over (sent out of it through a packet socket, in
//!   a network namespace of the test's own) is copied into a receive buffer: the buffer's
//!   pages and the used ring are logged.
//! - splitvisor-balloon: inflated pages are punched out of the memory file (they read as
//!   zeroes now, a change a migration must carry): they are logged, with the used ring.
//!
//! Each test also checks that a page the backend only read and a page nobody touched stay
//! out of the log, so that a backend logging everything (or the wrong pages) fails too.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::blk_process::{bin, guest_memory, DATA, HEADERS, STATUSES};
use integration_tests::scratch::Scratch;
use integration_tests::vring::{self, Ring, DESC_F_NEXT, DESC_F_WRITE};
use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const PAGE: u64 = 4096;
const F_LOG_ALL: u64 = 1 << 26;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const F_VERSION_1: u64 = 1 << 32;
const TIMEOUT: Duration = Duration::from_secs(10);

/// A backend process serving `socket`, killed (and reaped) on drop.
struct Backend(Child);

impl Backend {
    /// `binary --socket SOCKET ARGS…`; returns once the socket exists.
    fn start(binary: &str, socket: &Path, args: &[&str]) -> Backend {
        let child = Command::new(bin(binary))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (`cargo build --release`?): {e}"));
        let mut backend = Backend(child);
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = backend.0.try_wait() {
                panic!("{binary} exited ({status}) before making its socket");
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "{binary} made no socket within {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        backend
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The log a migrating vmm hands a backend: a memfd with one bit per 4 KiB page of guest
/// memory, up to its highest page (rounded up to whole pages, as the vmm sizes it).
struct DirtyLog {
    file: File,
    size: u64,
}

impl DirtyLog {
    fn new(mem: &GuestMemoryMmap) -> DirtyLog {
        let end = mem.last_addr().0 + 1;
        let size = end.div_ceil(PAGE).div_ceil(8).next_multiple_of(PAGE);
        // SAFETY: memfd_create reads the NUL-terminated name; the result is checked below.
        let fd = unsafe { libc::memfd_create(c"sv-test-dirty-log".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).expect("size the dirty log");
        DirtyLog { file, size }
    }

    /// What SET_LOG_BASE carries.
    fn region(&self) -> VhostUserDirtyLogRegion {
        VhostUserDirtyLogRegion {
            mmap_size: self.size,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        }
    }

    /// The guest pages whose bits are set.
    fn pages(&self) -> BTreeSet<u64> {
        let mut bits = vec![0u8; self.size as usize];
        self.file
            .read_exact_at(&mut bits, 0)
            .expect("read the dirty log");
        (0..self.size * 8)
            .filter(|p| bits[(p / 8) as usize] & (1 << (p % 8)) != 0)
            .collect()
    }

    /// Every page of `[gpa, gpa + len)` is in the log.
    fn assert_logged(&self, what: &str, gpa: u64, len: u64) {
        let pages = self.pages();
        let missing: Vec<u64> = (gpa / PAGE..=(gpa + len - 1) / PAGE)
            .filter(|p| !pages.contains(p))
            .collect();
        assert!(
            missing.is_empty(),
            "{what}: pages {} are not in the dirty log (it holds {})",
            runs(missing.iter().copied()),
            runs(pages.iter().copied())
        );
    }

    /// The page of `gpa` is not in the log.
    fn assert_clear(&self, what: &str, gpa: u64) {
        let pages = self.pages();
        assert!(
            !pages.contains(&(gpa / PAGE)),
            "{what}: page {} is in the dirty log, though the backend never wrote it",
            gpa / PAGE
        );
    }
}

/// Negotiate with the backend on `socket` (VERSION_1, LOG_SHMFD, the memory table), then
/// start logging into `log` as the vmm's `set_log` does when a migration starts: SET_LOG_BASE
/// (after the memory table, whose regions the backend attaches the log to; answered once it
/// logs), then SET_FEATURES again with LOG_ALL.
fn connect_logging(socket: &Path, mem: &GuestMemoryMmap, log: &DirtyLog) -> Frontend {
    let mut f = Frontend::connect(socket, 1).expect("connect to the backend");
    f.set_owner().expect("SET_OWNER");
    let offered = f.get_features().expect("GET_FEATURES");
    let wanted = F_VERSION_1 | F_PROTOCOL_FEATURES | F_LOG_ALL;
    assert_eq!(
        offered & wanted,
        wanted,
        "the backend offers VERSION_1, PROTOCOL_FEATURES and LOG_ALL ({offered:#x})"
    );
    // GET before SET, as the vmm always does
    let protocol = f.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    assert!(
        protocol.contains(P::LOG_SHMFD),
        "the backend offers LOG_SHMFD ({protocol:?})"
    );
    f.set_protocol_features(P::LOG_SHMFD)
        .expect("SET_PROTOCOL_FEATURES");
    let acked = F_VERSION_1 | F_PROTOCOL_FEATURES;
    f.set_features(acked).expect("SET_FEATURES");
    vring::share_memory(&mut f, mem).expect("SET_MEM_TABLE");
    f.set_log_base(0, Some(log.region()))
        .expect("SET_LOG_BASE with the log's memfd");
    f.set_features(acked | F_LOG_ALL)
        .expect("SET_FEATURES with LOG_ALL");
    f
}

#[test]
fn a_disk_read_logs_its_data_pages_its_status_byte_and_the_used_ring() {
    let dir = Scratch::new("dirty-log-blk");
    let image_path = dir.path("disk.raw");
    // a pattern that does not repeat every page, so a misplaced read shows
    let image: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image_path, &image).expect("write the image");
    let socket = dir.path("blk.sock");
    let image_arg = image_path.display().to_string();
    let _backend = Backend::start(
        "splitvisor-blk",
        &socket,
        &["--image", &image_arg, "--format", "raw"],
    );
    let (_ram, mem) = guest_memory();
    let log = DirtyLog::new(&mem);
    let mut f = connect_logging(&socket, &mem, &log);
    let mut ring = Ring::setup(&mut f, &mem, 0, 0).expect("request queue");

    // VIRTIO_BLK_T_IN (0) of two pages from sector 8 (byte 4096) into DATA
    const LEN: u32 = 8192;
    let mut header = [0u8; 16];
    header[8..].copy_from_slice(&8u64.to_le_bytes());
    mem.write_slice(&header, GuestAddress(HEADERS))
        .expect("request header");
    mem.write_slice(&[0xff], GuestAddress(STATUSES))
        .expect("status byte");
    let chain = [
        (HEADERS, 16, DESC_F_NEXT, 1),
        (DATA, LEN, DESC_F_NEXT | DESC_F_WRITE, 2),
        (STATUSES, 1, DESC_F_WRITE, 0),
    ];
    for (index, desc) in (0u16..).zip(chain) {
        ring.write_desc(&mem, index, desc).expect("descriptor");
    }
    ring.push(&mem, 0).expect("avail ring");
    ring.publish(&mem).expect("kick");
    let used = ring.wait_used(&mem, 1, TIMEOUT).expect("used ring");
    assert_eq!(used.len(), 1, "the read completes within {TIMEOUT:?}");

    let mut status = [0u8];
    mem.read_slice(&mut status, GuestAddress(STATUSES))
        .expect("status byte");
    assert_eq!(status[0], 0, "VIRTIO_BLK_S_OK");
    let mut data = vec![0u8; LEN as usize];
    mem.read_slice(&mut data, GuestAddress(DATA))
        .expect("data buffer");
    assert!(
        data[..] == image[4096..4096 + LEN as usize],
        "the buffer holds the image's bytes 4096..12288"
    );
    log.assert_logged("the data buffer", DATA, u64::from(LEN));
    log.assert_logged("the status byte", STATUSES, 1);
    log.assert_logged("the used ring", ring.used(), 1);
    log.assert_clear("the request header (only read)", HEADERS);
    log.assert_clear(
        "the page after the data buffer (untouched)",
        DATA + u64::from(LEN),
    );
}

const TAP: &str = "svlog0";
const GUEST_MAC: &str = "52:54:00:5d:10:90";
const GUEST_MAC_BYTES: [u8; 6] = [0x52, 0x54, 0x00, 0x5d, 0x10, 0x90];
/// The virtio-net header (v1) before every frame in a receive buffer.
const NET_HDR_LEN: usize = 12;
const RX_BUFFERS: u16 = 32;
const RX_LEN: u32 = 2048;

/// Receive buffer `i`: 2 KiB across the boundary of two pages of its own (from 512 bytes
/// before it), so that a frame of over 500 bytes writes to both.
fn rx_buffer(i: u16) -> u64 {
    DATA + u64::from(i) * 2 * PAGE + PAGE - 512
}

/// A frame to the guest's MAC, with the local experimental EtherType and a payload long
/// enough to cross into its buffer's second page.
fn test_frame() -> Vec<u8> {
    let mut frame = GUEST_MAC_BYTES.to_vec();
    frame.extend([0x02, 0, 0, 0, 0, 0x01]); // a locally administered source
    frame.extend(0x88b5u16.to_be_bytes());
    frame.extend((0..1000u32).map(|i| (i % 251) as u8));
    frame
}

/// Send `frame` out of interface `name` through a packet socket, as the host's network
/// would send it to the guest: the tap hands it to the process reading its queue.
fn send_frame(name: &str, frame: &[u8]) {
    let cname = std::ffi::CString::new(name).expect("an interface name");
    // SAFETY: if_nametoindex reads the NUL-terminated name we own.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(
        index,
        0,
        "no interface {name}: {}",
        io::Error::last_os_error()
    );
    // SAFETY: socket() takes no pointers; the descriptor is owned right below. Protocol 0:
    // the socket only sends.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value to fill in.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = u16::from_be_bytes([frame[12], frame[13]]).to_be();
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: sendto reads `frame` and `addr`, both ours and alive for the call, with their
    // exact lengths.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        sent,
        frame.len() as isize,
        "send the frame out of {name}: {}",
        io::Error::last_os_error()
    );
}

#[test]
fn a_received_frame_logs_its_receive_buffer_and_the_used_ring() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test makes a network namespace and a tap: run it as root"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: this test makes a tap (modprobe tun)"
    );
    let dir = Scratch::new("dirty-log-net");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare takes flags only; CLONE_NEWNET moves this thread alone (and the
            // processes it starts) into a new network namespace, gone with them.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            receive_one_frame(&dir);
        });
    });
}

/// The net test, on a thread in a network namespace of its own: the backend makes its tap
/// there (it goes away with the backend), and the frame never meets the host's network.
fn receive_one_frame(dir: &Scratch) {
    let socket = dir.path("net.sock");
    let _backend = Backend::start(
        "splitvisor-net",
        &socket,
        &["--create-tap", TAP, "--mac", GUEST_MAC],
    );
    let (_ram, mem) = guest_memory();
    let log = DirtyLog::new(&mem);
    let mut f = connect_logging(&socket, &mem, &log);
    let mut ring = Ring::setup(&mut f, &mem, 0, 0).expect("receive queue 0");
    for i in 0..RX_BUFFERS {
        ring.write_desc(&mem, i, (rx_buffer(i), RX_LEN, DESC_F_WRITE, 0))
            .expect("descriptor");
        ring.push(&mem, i).expect("avail ring");
    }
    ring.publish(&mem).expect("kick");
    let frame = test_frame();

    // the kernel's own IPv6 neighbour discovery on the new link may arrive too: find ours
    // (sent again each second it does not show, in case the link dropped it)
    let deadline = Instant::now() + TIMEOUT;
    let (mut others, mut sent, mut last_sent) = (0, 0, None::<Instant>);
    let buffer = 'found: loop {
        assert!(
            Instant::now() < deadline,
            "the frame (sent {sent} times) reached no receive buffer within {TIMEOUT:?} \
             ({others} other packets did)"
        );
        if last_sent.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            send_frame(TAP, &frame);
            (sent, last_sent) = (sent + 1, Some(Instant::now()));
        }
        let used = ring
            .wait_used(&mem, 1, Duration::from_secs(1))
            .expect("used ring");
        for (id, len) in used {
            let mut got = vec![0u8; len as usize];
            mem.read_slice(&mut got, GuestAddress(rx_buffer(id)))
                .expect("receive buffer");
            if got.get(NET_HDR_LEN..) == Some(&frame[..]) {
                break 'found rx_buffer(id);
            }
            others += 1;
        }
    };
    let written = (NET_HDR_LEN + frame.len()) as u64;
    assert!(
        (buffer % PAGE) + written > PAGE,
        "the frame spans two pages"
    );
    log.assert_logged("the receive buffer holding the frame", buffer, written);
    log.assert_logged("the used ring", ring.used(), 1);
    log.assert_clear("the avail ring (only read)", ring.avail());
    log.assert_clear(
        "the page after the receive buffers (untouched)",
        DATA + u64::from(RX_BUFFERS) * 2 * PAGE,
    );
}

#[test]
fn an_inflate_logs_the_released_pages_and_the_used_ring() {
    let dir = Scratch::new("dirty-log-balloon");
    let socket = dir.path("balloon.sock");
    let _backend = Backend::start("splitvisor-balloon", &socket, &[]);
    let (_ram, mem) = guest_memory();
    let log = DirtyLog::new(&mem);
    let mut f = connect_logging(&socket, &mem, &log);
    // no STATS_VQ acked: queue 0 inflates, 1 deflates
    let mut ring = Ring::setup(&mut f, &mem, 0, 0).expect("inflate queue");

    // 2 MiB from 8 MiB: one whole huge page if the memory file has them (the balloon
    // releases only whole ones), 512 small pages otherwise; the pages around it stay
    const START: u64 = 8 << 20;
    const LEN: u64 = 2 << 20;
    let filled = vec![0xaau8; (LEN + 2 * PAGE) as usize];
    mem.write_slice(&filled, GuestAddress(START - PAGE))
        .expect("fill the pages");
    let pfns: Vec<u8> = (START / PAGE..(START + LEN) / PAGE)
        .flat_map(|pfn| (pfn as u32).to_le_bytes())
        .collect();
    mem.write_slice(&pfns, GuestAddress(HEADERS))
        .expect("page frame numbers");
    ring.write_desc(&mem, 0, (HEADERS, pfns.len() as u32, 0, 0))
        .expect("descriptor");
    ring.push(&mem, 0).expect("avail ring");
    ring.publish(&mem).expect("kick");
    let used = ring.wait_used(&mem, 1, TIMEOUT).expect("used ring");
    assert_eq!(used.len(), 1, "the inflate completes within {TIMEOUT:?}");

    let mut released = vec![0u8; LEN as usize];
    mem.read_slice(&mut released, GuestAddress(START))
        .expect("the released pages");
    assert!(
        released.iter().all(|&b| b == 0),
        "the inflated pages were released (they read as zeroes)"
    );
    let mut edges = [0u8; 2];
    mem.read_slice(&mut edges[..1], GuestAddress(START - 1))
        .expect("the page below");
    mem.read_slice(&mut edges[1..], GuestAddress(START + LEN))
        .expect("the page above");
    assert_eq!(edges, [0xaa; 2], "the pages around them keep their bytes");
    log.assert_logged("the released pages", START, LEN);
    log.assert_logged("the used ring", ring.used(), 1);
    log.assert_clear("the page frame number list (only read)", HEADERS);
    log.assert_clear("the page below the released ones", START - PAGE);
    log.assert_clear("the page above the released ones", START + LEN);
}

/// Page numbers as runs: `2, 512, 2048-2559`.
fn runs(pages: impl Iterator<Item = u64>) -> String {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for p in pages {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == p => *last = p,
            _ => out.push((p, p)),
        }
    }
    let text: Vec<String> = out
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    format!("[{}]", text.join(", "))
}
