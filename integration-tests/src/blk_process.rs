//! A real `splitvisor-blk` process driven from a VM-less frontend over its vhost-user socket
//! (no KVM needed): start it on an image, connect and negotiate, and build one-sector write
//! requests in a guest memory the test owns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::config::{ByteSize, MemoryConfig};
use vmm::memory::GuestRam;

use crate::vring::{self, Ring, DESC_F_NEXT, DESC_F_WRITE};

const F_VERSION_1: u64 = 1 << 32;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Where [`write_request`] puts request headers, status bytes and data in guest memory.
pub const HEADERS: u64 = 1 << 20;
pub const STATUSES: u64 = 2 << 20;
pub const DATA: u64 = 4 << 20;

/// A workspace binary built by `cargo build --release`.
pub fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name)
}

/// 16 MiB of memfd-backed guest memory to share with a backend (the `GuestRam` keeps it).
pub fn guest_memory() -> (GuestRam, GuestMemoryMmap) {
    let ram = GuestRam::new(&MemoryConfig {
        size: ByteSize(16 << 20),
        ..MemoryConfig::default()
    })
    .expect("guest memory");
    let mem = ram.memory().clone();
    (ram, mem)
}

/// A splitvisor-blk process, killed on drop.
pub struct BlkProcess(Child);

impl BlkProcess {
    /// Start one on `socket` serving `image` as `format`, with `extra` arguments; returns
    /// once the socket exists.
    pub fn start(socket: &Path, image: &Path, format: &str, extra: &[&str]) -> BlkProcess {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(bin("splitvisor-blk"))
            .args(["--socket", &socket.display().to_string()])
            .args(["--image", &image.display().to_string()])
            .args(["--format", format])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("splitvisor-blk (built by `cargo build --release`)");
        let mut process = BlkProcess(child);
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!("splitvisor-blk exited ({status}) before making its socket");
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        process
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, and wait for the exit (the image closed cleanly).
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for BlkProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connect and negotiate VERSION_1 and the `protocol` features (each must be offered), and
/// share `mem`.
pub fn connect(
    socket: &Path,
    mem: &GuestMemoryMmap,
    protocol: VhostUserProtocolFeatures,
) -> Frontend {
    let mut f = Frontend::connect(socket, 1).expect("connect");
    f.set_owner().expect("SET_OWNER");
    let features = f.get_features().expect("GET_FEATURES");
    let offered = f.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    assert!(
        offered.contains(protocol),
        "splitvisor-blk offers {protocol:?} ({offered:?})"
    );
    f.set_protocol_features(protocol)
        .expect("SET_PROTOCOL_FEATURES");
    f.set_features(features & (F_VERSION_1 | F_PROTOCOL_FEATURES))
        .expect("SET_FEATURES");
    vring::share_memory(&mut f, mem).expect("memory table");
    f
}

/// Request `slot`: a write of `data` (whole sectors, at most 4 KiB) at `sector`, in
/// descriptors `3 * slot ..`; returns its head.
pub fn write_request(
    ring: &Ring,
    mem: &GuestMemoryMmap,
    slot: u16,
    sector: u64,
    data: &[u8],
) -> u16 {
    let hdr = HEADERS + u64::from(slot) * 16;
    let buf = DATA + u64::from(slot) * 4096;
    let status = STATUSES + u64::from(slot);
    mem.write_obj(1u32.to_le(), GuestAddress(hdr)).unwrap();
    mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(hdr + 8))
        .unwrap();
    mem.write_slice(data, GuestAddress(buf)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let d = 3 * slot;
    ring.write_desc(mem, d, (hdr, 16, DESC_F_NEXT, d + 1))
        .unwrap();
    ring.write_desc(mem, d + 1, (buf, data.len() as u32, DESC_F_NEXT, d + 2))
        .unwrap();
    ring.write_desc(mem, d + 2, (status, 1, DESC_F_WRITE, 0))
        .unwrap();
    d
}

/// The status byte the backend wrote for request `slot`.
pub fn status(mem: &GuestMemoryMmap, slot: u16) -> u8 {
    mem.read_obj(GuestAddress(STATUSES + u64::from(slot)))
        .unwrap()
}
