//! The guest driver's side of the queue harness: `backends::fuzz_harness::guest_driver` (its
//! formats are this harness's: chains, buffer fills — mode 3 writes page frame numbers —,
//! writes anywhere, avail index moves) over a guest memory backed by a memfd of its own (so
//! that the pages the balloon gives back are punched out of this file and nothing else), with
//! one split ring per queue in virtio's layout. Compact addresses are [`DATA`] + 64 × n.

use backends::fuzz_harness::driver_seed::{DriverOps, DriverSeed};
use backends::fuzz_harness::guest_driver::{GuestDriver, Layout, Ring};
use backends::fuzz_harness::memory_file;
use backends::guest_memory::GuestMemoryMmap;
use vm_memory::{FileOffset, GuestAddress};

use super::queues::{OP_AVAIL_IDX, OP_CHAIN, OP_POKE};

/// Guest RAM. The rings have a region of their own, anonymous memory: the balloon cannot give
/// it back (it has no file to punch; the device says so and goes on), so a ring never turns
/// to zeroes under the device in the middle of a kick. Then two adjacent regions of the memfd
/// (a range may span both) and one after a hole. (addr, len, memfd-backed)
const REGIONS: [(u64, usize, bool); 4] = [
    (0, 0x4000, false),
    (0x4000, 0x3_c000, true),
    (0x4_0000, 0x4_0000, true),
    (0x10_0000, 0x4_0000, true),
];
/// Where each queue's ring (descriptor table, avail ring, used ring) starts.
pub(super) const RINGS: [u64; 4] = [0x0, 0x1000, 0x2000, 0x3000];
/// Where the compactly addressed buffers start (after the rings, the first memfd byte).
pub(super) const DATA: u64 = 0x4000;
/// Byte-precise addresses around these: where the adjacent regions meet, where the hole ends.
pub(super) const EDGES: [u64; 2] = [0x4_0000, 0x10_0000];
/// The address format.
const LAYOUT: Layout = Layout {
    data: DATA,
    stride: 64,
    edges: EDGES,
};
/// The driver's operation codes (`queues.rs`).
const OPS: DriverOps = DriverOps {
    chain: OP_CHAIN,
    poke: OP_POKE,
    avail_idx: OP_AVAIL_IDX,
};

pub(super) type Driver = GuestDriver<{ RINGS.len() }>;

/// Memory mapped (the memfd-backed regions from a fresh memfd, each at its own offset), rings
/// of `size` entries (a power of two up to 128), all zeroes.
pub(super) fn new(size: u16) -> Option<Driver> {
    let total: usize = REGIONS.iter().filter(|r| r.2).map(|r| r.1).sum();
    let file = memory_file(total as u64).ok()?;
    let mut offset = 0;
    let mut ranges = Vec::new();
    for &(addr, len, backed) in &REGIONS {
        let backing = if backed {
            offset += len as u64;
            Some(FileOffset::new(file.try_clone().ok()?, offset - len as u64))
        } else {
            None
        };
        ranges.push((GuestAddress(addr), len, backing));
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(&ranges).ok()?;
    let rings = RINGS.map(|base| Ring::virtio(base, size));
    Some(Driver::new(mem, size, rings, LAYOUT))
}

/// A seed being written for this harness.
pub(super) fn seed() -> DriverSeed {
    DriverSeed::new(LAYOUT, OPS)
}
