//! `sv-netbench`: a vhost-user-net frontend with no VM, to measure a net backend alone at
//! native speed. Guest memory is a memfd; receive queue 0 and transmit queue 1 are split
//! virtqueues this program drives.
//!
//! - `--dir tx` (ring → tap): 256 transmit chains of one `--size`-byte frame each, reposted as
//!   the backend returns them; the tap's own rx counter confirms what reached the kernel.
//! - `--dir rx` (tap → ring): a thread sends frames into the tap through a packet socket as
//!   fast as it can; 256 receive buffers are reposted as the backend fills them. What the tap
//!   drops because the backend is slower is the backend's limit.
//!
//! Run it in the network namespace of the backend's tap (the frames go nowhere else):
//! sv-netbench --socket S --tap TAP --dir tx|rx --size 64 --secs 4

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use integration_tests::vring::{self, Ring, DESC_F_WRITE, QUEUE_SIZE};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::config::{ByteSize, MemoryConfig};
use vmm::memory::GuestRam;

const F_VERSION_1: u64 = 1 << 32;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const NET_HDR_LEN: usize = 12;
/// Guest memory per queue: the ring in the first MiB, then buffers.
const QUEUE_AREA: u64 = 16 << 20;
const RX_BUF: u32 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Dir {
    Tx,
    Rx,
}

#[derive(Debug, Parser)]
#[command(name = "sv-netbench")]
struct Args {
    /// The backend's vhost-user socket.
    #[arg(long)]
    socket: PathBuf,
    /// The backend's tap (to count, or to send into).
    #[arg(long)]
    tap: String,
    #[arg(long, value_enum)]
    dir: Dir,
    /// Ethernet frame size in bytes (60-1514).
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 4.0)]
    secs: f64,
    /// Print one JSON object instead of a line for people.
    #[arg(long)]
    json: bool,
}

/// An Ethernet frame to a unicast address nobody has (the kernel drops it at once), with
/// the local experimental EtherType.
fn frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

fn tap_counter(tap: &str, name: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{tap}/statistics/{name}");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("read {path}"))?
        .trim()
        .parse()?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(60..=1514).contains(&args.size) {
        bail!("--size must be between 60 and 1514");
    }
    let ram = GuestRam::new(&MemoryConfig {
        size: ByteSize(2 * QUEUE_AREA),
        ..MemoryConfig::default()
    })
    .context("guest memory")?;
    let mem = ram.memory().clone();
    let mut frontend = connect(&args, &mem)?;
    let rx = Ring::setup(&mut frontend, &mem, 0, 0)?;
    let tx = Ring::setup(&mut frontend, &mem, 1, QUEUE_AREA)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    let start = Instant::now();
    let (packets, tap_seen) = match args.dir {
        Dir::Tx => {
            let before = tap_counter(&args.tap, "rx_packets")?;
            let n = transmit(tx, &mem, args.size, deadline)?;
            (n, tap_counter(&args.tap, "rx_packets")? - before)
        }
        Dir::Rx => receive(rx, &mem, &args, deadline)?,
    };
    let secs = start.elapsed().as_secs_f64();
    let pps = packets as f64 / secs;
    let mbits = pps * args.size as f64 * 8.0 / 1e6;
    if args.json {
        println!(
            "{{\"dir\":\"{:?}\",\"size\":{},\"pps\":{pps:.0},\"mbits\":{mbits:.1},\"tap\":{tap_seen}}}",
            args.dir, args.size
        );
    } else {
        println!(
            "{:?} size={}: {pps:.0} packets/s, {mbits:.1} Mbit/s (tap side: {tap_seen} packets)",
            args.dir, args.size
        );
    }
    drop(frontend);
    Ok(())
}

fn connect(args: &Args, mem: &GuestMemoryMmap) -> Result<Frontend> {
    let mut f = Frontend::connect(&args.socket, 2)
        .with_context(|| format!("connect to {}", args.socket.display()))?;
    f.set_owner().context("SET_OWNER")?;
    let features = f.get_features().context("GET_FEATURES")?;
    if features & F_VERSION_1 == 0 || features & F_PROTOCOL_FEATURES == 0 {
        bail!("the backend lacks VERSION_1 or PROTOCOL_FEATURES");
    }
    let offered = f.get_protocol_features().context("GET_PROTOCOL_FEATURES")?;
    f.set_protocol_features(offered & VhostUserProtocolFeatures::MQ)
        .context("SET_PROTOCOL_FEATURES")?;
    // no offloads, no merged buffers, no event index: the plainest data path
    f.set_features(F_VERSION_1 | F_PROTOCOL_FEATURES)
        .context("SET_FEATURES")?;
    vring::share_memory(&mut f, mem)?;
    Ok(f)
}

/// Keep the transmit ring full of one frame until the deadline; returns frames sent.
fn transmit(mut ring: Ring, mem: &GuestMemoryMmap, size: usize, deadline: Instant) -> Result<u64> {
    let buf = ring.base + (1 << 20);
    let mut packet = vec![0u8; NET_HDR_LEN];
    packet.extend(frame(size));
    mem.write_slice(&packet, GuestAddress(buf))?;
    for d in 0..QUEUE_SIZE {
        ring.write_desc(mem, d, (buf, packet.len() as u32, 0, 0))?;
        ring.push(mem, d)?;
    }
    ring.publish(mem)?;
    let mut sent = 0u64;
    loop {
        ring.wait_call_or_fail()?;
        let used = ring.take_used(mem)?;
        sent += used.len() as u64;
        if Instant::now() >= deadline {
            return Ok(sent);
        }
        for (id, _) in used {
            ring.push(mem, id)?;
        }
        ring.publish(mem)?;
    }
}

/// A packet socket on `tap` (sending into it makes the tap hand the frame to the backend).
fn packet_socket(tap: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(tap)?;
    // SAFETY: if_nametoindex reads the NUL-terminated name we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {tap}");
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket() takes no pointers; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("packet socket");
    }
    // SAFETY: a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: bind reads the sockaddr_ll we own, with its exact size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("bind the packet socket");
    }
    Ok(fd)
}

/// Flood the tap from a thread, keep the receive ring stocked; returns (frames received,
/// frames the generator sent).
fn receive(
    mut ring: Ring,
    mem: &GuestMemoryMmap,
    args: &Args,
    deadline: Instant,
) -> Result<(u64, u64)> {
    let bufs = ring.base + (1 << 20);
    for d in 0..QUEUE_SIZE {
        ring.write_desc(
            mem,
            d,
            (
                bufs + u64::from(d) * u64::from(RX_BUF),
                RX_BUF,
                DESC_F_WRITE,
                0,
            ),
        )?;
        ring.push(mem, d)?;
    }
    ring.publish(mem)?;
    let sock = packet_socket(&args.tap)?;
    let stop = AtomicBool::new(false);
    let generated = AtomicU64::new(0);
    let f = frame(args.size);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: send reads `f`, which we own, for its length.
                let n = unsafe { libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
                if n > 0 {
                    generated.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let result = (|| {
            let mut received = 0u64;
            while Instant::now() < deadline {
                if !ring.wait_call(100)? {
                    continue;
                }
                let used = ring.take_used(mem)?;
                // (the kernel's own IPv6 neighbour discovery on the tap is counted too: a
                // handful of packets)
                for (id, _) in &used {
                    ring.push(mem, *id)?;
                }
                received += used.len() as u64;
                ring.publish(mem)?;
            }
            Ok(received)
        })();
        stop.store(true, Ordering::Relaxed);
        result.map(|r| (r, generated.load(Ordering::Relaxed)))
    })
}
