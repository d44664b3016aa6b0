//! The guest driver's side of the queue harness: `backends::fuzz_harness::guest_driver` (its
//! formats are this harness's: chains, buffer fills, writes anywhere, avail index moves) over
//! this harness's guest memory, one split ring per queue laid out by virtio-queue's
//! `MockSplitQueue`, which also gives the device's view of each ring. Compact addresses are
//! [`DATA`] + 32 × n.

use backends::fuzz_harness::driver_seed::{DriverOps, DriverSeed};
use backends::fuzz_harness::guest_driver::{GuestDriver, Layout, Ring};
use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestAddress;

use super::queues::{OP_AVAIL_IDX, OP_CHAIN, OP_POKE};

/// Guest RAM: two adjacent regions (a buffer may span both) and one after a hole.
const REGIONS: [(u64, usize); 3] = [(0, 0x4_0000), (0x4_0000, 0x1_0000), (0x10_0000, 0x1_0000)];
/// Where each queue's ring (descriptor table, avail ring, used ring) starts.
pub(super) const RINGS: [u64; 3] = [0x0, 0x1000, 0x2000];
/// Where the compactly addressed buffers start (after the rings).
pub(super) const DATA: u64 = 0x4000;
/// Byte-precise addresses around these: where the adjacent regions meet, where the hole ends.
pub(super) const EDGES: [u64; 2] = [0x4_0000, 0x10_0000];
/// The address format.
const LAYOUT: Layout = Layout {
    data: DATA,
    stride: 32,
    edges: EDGES,
};
/// The driver's operation codes (`queues.rs`).
const OPS: DriverOps = DriverOps {
    chain: OP_CHAIN,
    poke: OP_POKE,
    avail_idx: OP_AVAIL_IDX,
};

pub(super) type Driver = GuestDriver<{ RINGS.len() }>;

/// Memory mapped, rings of `size` entries (a power of two up to 128) zeroed, and the device's
/// view of each ring, ready.
pub(super) fn new(size: u16) -> Option<(Driver, [Queue; RINGS.len()])> {
    let ranges: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).ok()?;
    let mut rings = [Ring::default(); RINGS.len()];
    let mut queues = Vec::new();
    for (ring, base) in rings.iter_mut().zip(RINGS) {
        // laid out (and zeroed) once: MockSplitQueue::create writes the rings' headers
        let mock = MockSplitQueue::create(&mem, GuestAddress(base), size);
        *ring = Ring {
            desc: mock.desc_table_addr().0,
            avail: mock.avail_addr().0,
            used: mock.used_addr().0,
        };
        queues.push(mock.create_queue::<Queue>().ok()?);
    }
    let queues = queues.try_into().ok()?;
    Some((Driver::new(mem, size, rings, LAYOUT), queues))
}

/// A seed being written for this harness.
pub(super) fn seed() -> DriverSeed {
    DriverSeed::new(LAYOUT, OPS)
}
