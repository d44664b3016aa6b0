//! The guest driver's side of the queue harness: a small guest memory, one split ring per
//! queue (laid out by virtio-queue's `MockSplitQueue`), and descriptor chains placed on them
//! exactly as the input says — addresses, lengths, flags, next indexes and buffer contents
//! — plus the hostile moves a driver can make (writing anywhere in its memory, moving its
//! avail index anywhere).
//!
//! Formats (see `input.rs` for the integers):
//! - address: `a: u16`; `a >> 14` = 0: [`DATA`] + 32 × (a & 0x3fff); 1, 2: byte-precise, from
//!   8 KiB below [`EDGES`]\[0\] or \[1\]; 3: a raw `u64` follows.
//! - descriptor: `flags: u8` (bits 0–2: NEXT, WRITE, INDIRECT; bit 7: the length is a `u32`,
//!   else a `u16`), address, length, `next: u8` (0: the following table entry; n: entry
//!   (this + 1 + n) mod 256, so 255 is itself), fill.
//! - fill (the buffer's contents): `mode: u8`, `count: u8`, `count` literal bytes, then up to
//!   the buffer's length (at most [`MAX_FILL`]): mode % 4 = 0 nothing, 1 bytes counting
//!   (i % 251), 2 zeroes, 3 little-endian `u32`s counting from a `u32` that follows.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::input::{Input, Seed};

/// Guest RAM: two adjacent regions (a buffer may span both) and one after a hole.
pub(super) const REGIONS: [(u64, usize); 3] =
    [(0, 0x4_0000), (0x4_0000, 0x1_0000), (0x10_0000, 0x1_0000)];
/// Where each queue's ring (descriptor table, avail ring, used ring) starts.
pub(super) const RINGS: [u64; 3] = [0x0, 0x1000, 0x2000];
/// Where the compactly addressed buffers start (after the rings).
pub(super) const DATA: u64 = 0x4000;
/// Byte-precise addresses around these: where the adjacent regions meet, where the hole ends.
pub(super) const EDGES: [u64; 2] = [0x4_0000, 0x10_0000];
/// The most bytes one descriptor's fill writes.
pub(super) const MAX_FILL: usize = 0x1_0100;
/// The most fill bytes one input writes in all (keeps every input fast).
const FILL_BUDGET: usize = 1 << 20;
/// Most descriptors in one chain the input lays out.
pub(super) const MAX_CHAIN: u8 = 16;

pub(super) const NEXT: u8 = 1;
pub(super) const WRITE: u8 = 2;
pub(super) const INDIRECT: u8 = 4;
/// In a descriptor's flags byte: the length is a `u32`.
pub(super) const LONG: u8 = 0x80;

pub(super) fn read_addr(input: &mut Input) -> u64 {
    let a = input.u16();
    let low = u64::from(a & 0x3fff);
    match a >> 14 {
        0 => DATA + 32 * low,
        1 => EDGES[0] - 0x2000 + low,
        2 => EDGES[1] - 0x2000 + low,
        _ => input.u64(),
    }
}

pub(super) fn write_addr(seed: &mut Seed, gpa: u64) {
    let near = |edge: u64| gpa.wrapping_sub(edge - 0x2000);
    if gpa >= DATA && (gpa - DATA).is_multiple_of(32) && (gpa - DATA) / 32 <= 0x3fff {
        seed.u16(((gpa - DATA) / 32) as u16);
    } else if near(EDGES[0]) <= 0x3fff {
        seed.u16(0x4000 | near(EDGES[0]) as u16);
    } else if near(EDGES[1]) <= 0x3fff {
        seed.u16(0x8000 | near(EDGES[1]) as u16);
    } else {
        seed.u16(0xc000).u64(gpa);
    }
}

/// Bytes as a fill says, at most `total` of them (only the literal ones with mode 0).
pub(super) fn read_fill(input: &mut Input, total: usize) -> Vec<u8> {
    let mode = input.u8() % 4;
    let count = usize::from(input.u8());
    let literal = input.bytes(count);
    let start = if mode == 3 { input.u32() } else { 0 };
    let mut buf: Vec<u8> = match mode {
        1 => (0..total).map(|i| (i % 251) as u8).collect(),
        3 => (0..total.div_ceil(4) as u32)
            .flat_map(|i| start.wrapping_add(i).to_le_bytes())
            .take(total)
            .collect(),
        _ => vec![0; total],
    };
    let n = literal.len().min(total);
    buf[..n].copy_from_slice(&literal[..n]);
    if mode == 0 {
        buf.truncate(n);
    }
    buf
}

/// What a buffer is filled with (the seeds' side of the fill format).
#[derive(Clone, Default)]
pub(super) struct Fill {
    pub mode: u8,
    pub literal: Vec<u8>,
    pub run_start: u32,
}

impl Fill {
    pub(super) fn literal(bytes: &[u8]) -> Fill {
        Fill {
            literal: bytes.to_vec(),
            ..Fill::default()
        }
    }

    /// `bytes`, then bytes counting up to the buffer's end.
    pub(super) fn counting(bytes: &[u8]) -> Fill {
        Fill {
            mode: 1,
            ..Fill::literal(bytes)
        }
    }

    pub(super) fn write(&self, seed: &mut Seed) {
        seed.u8(self.mode).u8(self.literal.len() as u8);
        seed.bytes(&self.literal[..self.literal.len().min(255)]);
        if self.mode % 4 == 3 {
            seed.u32(self.run_start);
        }
    }
}

/// One descriptor as the seeds write it.
#[derive(Clone)]
pub(super) struct Desc {
    pub flags: u8,
    pub addr: u64,
    pub len: u32,
    pub next: u8,
    pub fill: Fill,
}

impl Desc {
    pub(super) fn new(addr: u64, len: u32, flags: u8) -> Desc {
        Desc {
            flags,
            addr,
            len,
            next: 0,
            fill: Fill::default(),
        }
    }

    pub(super) fn fill(mut self, fill: Fill) -> Desc {
        self.fill = fill;
        self
    }

    pub(super) fn write(&self, seed: &mut Seed) {
        let long = self.len > u32::from(u16::MAX);
        seed.u8(self.flags | if long { LONG } else { 0 });
        write_addr(seed, self.addr);
        if long {
            seed.u32(self.len);
        } else {
            seed.u16(self.len as u16);
        }
        seed.u8(self.next);
        self.fill.write(seed);
    }
}

/// Where one ring's parts are in guest memory.
#[derive(Clone, Copy)]
pub(super) struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// The driver: guest memory, its rings, and where it is in each descriptor table.
pub(super) struct Driver {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    pub rings: [Ring; RINGS.len()],
    next_desc: [u16; RINGS.len()],
    fill_left: usize,
}

impl Driver {
    /// Memory mapped, rings of `size` entries (a power of two up to 128) zeroed, and the
    /// device's view of each ring, ready.
    pub(super) fn new(size: u16) -> Option<(Driver, [Queue; RINGS.len()])> {
        let ranges: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).ok()?;
        let mut rings = [Ring {
            desc: 0,
            avail: 0,
            used: 0,
        }; RINGS.len()];
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
        let driver = Driver {
            mem,
            size,
            rings,
            next_desc: [0; RINGS.len()],
            fill_left: FILL_BUDGET,
        };
        Some((driver, queues))
    }

    /// Lay out a chain from the input on ring `q` (descriptors from the next free table
    /// entry on, wrapping) and make its head available.
    pub(super) fn add_chain(&mut self, q: usize, input: &mut Input) {
        let count = 1 + input.u8() % MAX_CHAIN;
        let head = self.next_desc[q] % self.size;
        for i in 0..u16::from(count) {
            let index = (head + i) % self.size;
            let flags = input.u8();
            let addr = read_addr(input);
            let len = if flags & LONG != 0 {
                input.u32()
            } else {
                u32::from(input.u16())
            };
            let next = match input.u8() {
                0 => (index + 1) % self.size,
                n => ((u32::from(index) + 1 + u32::from(n)) % 256) as u16,
            };
            let desc = SplitDescriptor::new(addr, len, u16::from(flags & 7), next);
            let at = self.rings[q].desc + 16 * u64::from(index);
            let _ = self
                .mem
                .write_obj(RawDescriptor::from(desc), GuestAddress(at));
            self.fill(addr, len, input);
        }
        self.next_desc[q] = (head + u16::from(count)) % self.size;
        self.publish(q, head);
    }

    /// Write a buffer's contents (see the module's fill format).
    fn fill(&mut self, addr: u64, len: u32, input: &mut Input) {
        let total = (len as usize).min(MAX_FILL).min(self.fill_left);
        self.fill_left -= total;
        let buf = read_fill(input, total);
        // a buffer (partly) outside guest memory is simply not filled
        let _ = self.mem.write_slice(&buf, GuestAddress(addr));
    }

    /// The avail index ring `q`'s driver has published.
    pub(super) fn avail_idx(&self, q: usize) -> u16 {
        let at = GuestAddress(self.rings[q].avail + 2);
        self.mem.read_obj(at).unwrap_or(0)
    }

    /// Make the chain at `head` available: the next avail slot, then the index past it.
    fn publish(&self, q: usize, head: u16) {
        let avail = self.rings[q].avail;
        let idx = self.avail_idx(q);
        let slot = avail + 4 + 2 * u64::from(idx % self.size);
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        let _ = self
            .mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2));
    }

    /// The driver writes `n: u8` bytes at an address (its own rings included).
    pub(super) fn poke(&mut self, input: &mut Input) {
        let addr = read_addr(input);
        let n = usize::from(input.u8());
        let bytes = input.bytes(n);
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    /// The driver sets ring `q`'s avail index to anything at all.
    pub(super) fn set_avail_idx(&self, q: usize, idx: u16) {
        let avail = self.rings[q].avail;
        let _ = self.mem.write_obj(idx, GuestAddress(avail + 2));
    }

    #[cfg(test)]
    /// Entry `i` of ring `q`'s used ring: (head, length).
    pub(super) fn used(&self, q: usize, i: u16) -> (u32, u32) {
        let at = self.rings[q].used + 4 + 8 * u64::from(i % self.size);
        let id = self.mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap_or(u32::MAX);
        (id, len)
    }
}
