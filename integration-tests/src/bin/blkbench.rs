//! `sv-blkbench`: a vhost-user-blk frontend with no VM, to measure a block backend alone at
//! native speed. Guest memory is a memfd (the vmm's own `GuestRam`); each queue is a split
//! virtqueue this program fills, kicks through an eventfd and reaps when the call eventfd
//! fires, keeping `--qd` requests in flight per queue, one thread per queue.
//!
//! sv-blkbench --socket S --rw randread|randwrite|read|write --bs 4096 --qd 32 --queues 4 --secs 4

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use integration_tests::vring::{self, Ring, DESC_F_NEXT, DESC_F_WRITE, QUEUE_SIZE};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::config::{ByteSize, MemoryConfig};
use vmm::memory::GuestRam;

const F_VERSION_1: u64 = 1 << 32;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const F_BLK_MQ: u64 = 1 << 12;
/// Guest memory per queue: rings, headers, status bytes, then data buffers.
const QUEUE_AREA: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Pattern {
    Randread,
    Randwrite,
    Read,
    Write,
}

#[derive(Debug, Parser)]
#[command(name = "sv-blkbench")]
struct Args {
    /// The backend's vhost-user socket.
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, value_enum)]
    rw: Pattern,
    /// Request size in bytes.
    #[arg(long, default_value_t = 4096)]
    bs: u64,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 1)]
    qd: u16,
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Seconds to run.
    #[arg(long, default_value_t = 4.0)]
    secs: f64,
    /// Back the memory with 2 MiB huge pages (needs free ones in /proc/sys/vm/nr_hugepages),
    /// so every buffer of up to 2 MiB is physically contiguous whatever the backend.
    #[arg(long)]
    hugepages: bool,
    /// Print one JSON object instead of a line for people.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.qd == 0 || u32::from(args.qd) * 3 > u32::from(QUEUE_SIZE) {
        bail!("--qd must be between 1 and {}", QUEUE_SIZE / 3);
    }
    if args.bs == 0 || args.bs % 512 != 0 || args.bs * u64::from(args.qd) > QUEUE_AREA / 2 {
        bail!(
            "--bs must be a multiple of 512 with bs * qd <= {} MiB",
            QUEUE_AREA >> 21
        );
    }
    let size = QUEUE_AREA * u64::from(args.queues);
    let ram = GuestRam::new(&MemoryConfig {
        size: ByteSize(size),
        hugepages: args.hugepages.then_some(true),
        ..MemoryConfig::default()
    })
    .context("guest memory")?;
    let mem = ram.memory().clone();
    let (mut frontend, capacity) = connect(&args, &mem)?;
    let queues = setup_queues(&mut frontend, &mem, args.queues)?;
    for q in &queues {
        q.prefault_buffers(&mem, args.bs * u64::from(args.qd))?;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    let start = Instant::now();
    let results: Vec<Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                let mem = mem.clone();
                let args = &args;
                s.spawn(move || q.run(&mem, args, capacity, i as u64, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("queue thread panicked")))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut ops = 0;
    for r in results {
        ops += r?;
    }
    let iops = ops as f64 / elapsed;
    let mbps = iops * args.bs as f64 / 1e6;
    if args.json {
        println!(
            "{{\"rw\":\"{:?}\",\"bs\":{},\"qd\":{},\"queues\":{},\"iops\":{iops:.0},\"mbps\":{mbps:.1}}}",
            args.rw, args.bs, args.qd, args.queues
        );
    } else {
        println!(
            "{:?} bs={} qd={} queues={}: {iops:.0} IOPS, {mbps:.1} MB/s",
            args.rw, args.bs, args.qd, args.queues
        );
    }
    drop(frontend);
    Ok(())
}

/// Negotiate; returns the frontend and the disk's capacity in bytes.
fn connect(args: &Args, mem: &GuestMemoryMmap) -> Result<(Frontend, u64)> {
    let mut f = Frontend::connect(&args.socket, u64::from(args.queues))
        .with_context(|| format!("connect to {}", args.socket.display()))?;
    f.set_owner().context("SET_OWNER")?;
    let features = f.get_features().context("GET_FEATURES")?;
    if features & F_VERSION_1 == 0 || features & F_PROTOCOL_FEATURES == 0 {
        bail!("the backend lacks VERSION_1 or PROTOCOL_FEATURES");
    }
    let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG;
    let offered = f.get_protocol_features().context("GET_PROTOCOL_FEATURES")?;
    f.set_protocol_features(offered & wanted)
        .context("SET_PROTOCOL_FEATURES")?;
    if args.queues > 1 && (features & F_BLK_MQ == 0 || f.get_queue_num()? < u64::from(args.queues))
    {
        bail!("the backend does not offer {} queues", args.queues);
    }
    let (_, config) = f
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .context("GET_CONFIG")?;
    let capacity = u64::from_le_bytes(config[..8].try_into()?) * 512;
    f.set_features(F_VERSION_1 | F_PROTOCOL_FEATURES | (features & F_BLK_MQ))
        .context("SET_FEATURES")?;
    vring::share_memory(&mut f, mem)?;
    Ok((f, capacity))
}

/// One request queue: its ring, then headers, status bytes and data buffers.
struct Queue {
    ring: Ring,
}

impl Queue {
    fn headers(&self) -> u64 {
        self.ring.base + (1 << 20)
    }
    fn statuses(&self) -> u64 {
        self.ring.base + (2 << 20)
    }
    fn data(&self) -> u64 {
        self.ring.base + (4 << 20)
    }

    /// Write the first `len` bytes of data buffers once before any request, as a running
    /// guest's RAM is populated. Otherwise the backend's first O_DIRECT request on each buffer
    /// faults its pages in during the timed run, from whichever of its threads gets there
    /// first, and their physical layout (how many pieces the kernel must split a 1 MiB request
    /// into) differs by backend.
    fn prefault_buffers(&self, mem: &GuestMemoryMmap, len: u64) -> Result<()> {
        for off in (0..len).step_by(4096) {
            mem.write_obj(0u8, GuestAddress(self.data() + off))?;
        }
        Ok(())
    }
}

fn setup_queues(f: &mut Frontend, mem: &GuestMemoryMmap, count: u16) -> Result<Vec<Queue>> {
    (0..count)
        .map(|i| {
            let ring = Ring::setup(f, mem, usize::from(i), u64::from(i) * QUEUE_AREA)?;
            Ok(Queue { ring })
        })
        .collect()
}

impl Queue {
    /// Build request `slot` (descriptors 3*slot..3*slot+2) for the byte offset `offset`.
    fn post(
        &mut self,
        mem: &GuestMemoryMmap,
        slot: u16,
        write: bool,
        offset: u64,
        bs: u64,
    ) -> Result<()> {
        let hdr = self.headers() + u64::from(slot) * 16;
        let status = self.statuses() + u64::from(slot);
        let data = self.data() + u64::from(slot) * bs;
        let kind: u32 = if write { 1 } else { 0 };
        mem.write_obj(kind.to_le(), GuestAddress(hdr))?;
        mem.write_obj(0u32, GuestAddress(hdr + 4))?;
        mem.write_obj((offset / 512).to_le(), GuestAddress(hdr + 8))?;
        let d = 3 * slot;
        let descs = [
            (hdr, 16u32, DESC_F_NEXT, d + 1),
            (
                data,
                bs as u32,
                DESC_F_NEXT | if write { 0 } else { DESC_F_WRITE },
                d + 2,
            ),
            (status, 1, DESC_F_WRITE, 0),
        ];
        for (k, desc) in descs.into_iter().enumerate() {
            self.ring.write_desc(mem, d + k as u16, desc)?;
        }
        self.ring.push(mem, d)
    }

    /// Keep `qd` requests in flight until the deadline; returns completed requests.
    fn run(
        mut self,
        mem: &GuestMemoryMmap,
        args: &Args,
        capacity: u64,
        seed: u64,
        deadline: Instant,
    ) -> Result<u64> {
        let write = matches!(args.rw, Pattern::Randwrite | Pattern::Write);
        let random = matches!(args.rw, Pattern::Randread | Pattern::Randwrite);
        let blocks = capacity / args.bs;
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        // sequential streams start at different places per queue
        let mut next_seq = seed * (blocks / u64::from(args.queues.max(1)));
        let mut next_offset = || {
            if random {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % blocks) * args.bs
            } else {
                next_seq = (next_seq + 1) % blocks;
                next_seq * args.bs
            }
        };
        for slot in 0..args.qd {
            self.post(mem, slot, write, next_offset(), args.bs)?;
        }
        self.ring.publish(mem)?;
        let mut done = 0u64;
        loop {
            self.ring.wait_call_or_fail()?;
            let mut reposted = false;
            for (id, _) in self.ring.take_used(mem)? {
                let slot = id / 3;
                let status: u8 = mem.read_obj(GuestAddress(self.statuses() + u64::from(slot)))?;
                if status != 0 {
                    bail!("request failed with status {status}");
                }
                done += 1;
                if Instant::now() < deadline {
                    self.post(mem, slot, write, next_offset(), args.bs)?;
                    reposted = true;
                }
            }
            if reposted {
                self.ring.publish(mem)?;
            } else if Instant::now() >= deadline && self.ring.last_used == self.ring.avail_idx {
                return Ok(done);
            }
        }
    }
}
