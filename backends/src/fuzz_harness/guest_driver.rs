//! The guest driver's side of the queue harnesses (net, balloon): a small guest memory, one
//! split ring per queue, and descriptor chains placed on them exactly as the input says —
//! addresses, lengths, flags, next indexes and buffer contents — plus the hostile moves a
//! driver can make (writing anywhere in its memory, moving its avail index anywhere). Each
//! harness maps its own memory and lays out its own rings; the formats below are shared, with
//! the [`Layout`] the harness gives (`driver_seed.rs` writes them for the seeds).
//!
//! Formats (see `bytes.rs` for the integers):
//! - address: `a: u16`; `a >> 14` = 0: `data` + `stride` × (a & 0x3fff); 1, 2: byte-precise,
//!   from 8 KiB below `edges`\[0\] or \[1\]; 3: a raw `u64` follows.
//! - descriptor: `flags: u8` (bits 0–2: NEXT, WRITE, INDIRECT; bit 7: the length is a `u32`,
//!   else a `u16`), address, length, `next: u8` (0: the following table entry; n: entry
//!   (this + 1 + n) mod 256, so 255 is itself), fill.
//! - fill (the buffer's contents): `mode: u8`, `count: u8`, `count` literal bytes, then up to
//!   the buffer's length (at most [`MAX_FILL`]): mode % 4 = 0 nothing, 1 bytes counting
//!   (i % 251), 2 zeroes, 3 little-endian `u32`s counting from a `u32` that follows.
//! - chain (an operation of the harness): `count: u8` → 1 + count % [`MAX_CHAIN`]
//!   descriptors, laid out from the ring's next free table entry on.

use crate::guest_memory::GuestMemoryMmap;
use crate::guest_memory::Vring;
use vhost_user_backend::VringT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};

use super::bytes::{Input, Seed};

/// The most bytes one descriptor's fill writes.
pub const MAX_FILL: usize = 0x1_0100;
/// The most fill bytes one input writes in all (keeps every input fast).
const FILL_BUDGET: usize = 1 << 20;
/// Most descriptors in one chain the input lays out.
pub const MAX_CHAIN: u8 = 16;

pub const NEXT: u8 = 1;
pub const WRITE: u8 = 2;
pub const INDIRECT: u8 = 4;
/// In a descriptor's flags byte: the length is a `u32`.
pub const LONG: u8 = 0x80;

/// Where a harness's compact and byte-precise addresses point (the address format).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Where the compactly addressed buffers start (after the rings).
    pub data: u64,
    /// How far apart the compactly addressed buffers are.
    pub stride: u64,
    /// Byte-precise addresses around these: where adjacent regions meet, where a hole ends.
    pub edges: [u64; 2],
}

impl Layout {
    pub fn read_addr(&self, input: &mut Input) -> u64 {
        let a = input.u16();
        let low = u64::from(a & 0x3fff);
        match a >> 14 {
            0 => self.data + self.stride * low,
            1 => self.edges[0] - 0x2000 + low,
            2 => self.edges[1] - 0x2000 + low,
            _ => input.u64(),
        }
    }

    pub fn write_addr(&self, seed: &mut Seed, gpa: u64) {
        let (data, stride) = (self.data, self.stride);
        let near = |edge: u64| gpa.wrapping_sub(edge - 0x2000);
        if gpa >= data && (gpa - data).is_multiple_of(stride) && (gpa - data) / stride <= 0x3fff {
            seed.u16(((gpa - data) / stride) as u16);
        } else if near(self.edges[0]) <= 0x3fff {
            seed.u16(0x4000 | near(self.edges[0]) as u16);
        } else if near(self.edges[1]) <= 0x3fff {
            seed.u16(0x8000 | near(self.edges[1]) as u16);
        } else {
            seed.u16(0xc000).u64(gpa);
        }
    }
}

/// Bytes as a fill says, at most `total` of them (only the literal ones with mode 0).
pub fn read_fill(input: &mut Input, total: usize) -> Vec<u8> {
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

/// Where one ring's parts are in guest memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Ring {
    /// Virtio's split ring of `size` entries at `base`: the descriptor table, the avail ring
    /// (flags, idx, ring, used_event) 2-aligned, the used ring 4-aligned.
    pub fn virtio(base: u64, size: u16) -> Ring {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        Ring {
            desc: base,
            avail,
            used,
        }
    }
}

/// The driver: guest memory, its `N` rings, and where it is in each descriptor table.
pub struct GuestDriver<const N: usize> {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    pub rings: [Ring; N],
    layout: Layout,
    next_desc: [u16; N],
    fill_left: usize,
}

impl<const N: usize> GuestDriver<N> {
    /// The driver of `mem`, with rings of `size` entries (a power of two) at `rings`.
    pub fn new(mem: GuestMemoryMmap, size: u16, rings: [Ring; N], layout: Layout) -> Self {
        GuestDriver {
            mem,
            size,
            rings,
            layout,
            next_desc: [0; N],
            fill_left: FILL_BUDGET,
        }
    }

    /// Lay out a chain from the input on ring `q` (descriptors from the next free table
    /// entry on, wrapping) and make its head available.
    pub fn add_chain(&mut self, q: usize, input: &mut Input) {
        let count = 1 + input.u8() % MAX_CHAIN;
        let head = self.next_desc[q] % self.size;
        for i in 0..u16::from(count) {
            let index = (head + i) % self.size;
            let flags = input.u8();
            let addr = self.layout.read_addr(input);
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
    pub fn avail_idx(&self, q: usize) -> u16 {
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
    pub fn poke(&mut self, input: &mut Input) {
        let addr = self.layout.read_addr(input);
        let n = usize::from(input.u8());
        let bytes = input.bytes(n);
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    /// The driver sets ring `q`'s avail index to anything at all.
    pub fn set_avail_idx(&self, q: usize, idx: u16) {
        let avail = self.rings[q].avail;
        let _ = self.mem.write_obj(idx, GuestAddress(avail + 2));
    }

    /// Entry `i` of ring `q`'s used ring: (head, length).
    pub fn used(&self, q: usize, i: u16) -> (u32, u32) {
        let at = self.rings[q].used + 4 + 8 * u64::from(i % self.size);
        let id = self.mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap_or(u32::MAX);
        (id, len)
    }

    /// A device's vrings over the first `count` rings, as vhost-user-backend's worker holds
    /// them once the frontend set them up: sized, addressed, ready and enabled.
    pub fn vrings(
        &self,
        memory: &GuestMemoryAtomic<GuestMemoryMmap>,
        count: usize,
        event_idx: bool,
    ) -> Option<Vec<Vring>> {
        let mut vrings = Vec::new();
        for ring in self.rings.iter().take(count) {
            let vring = Vring::new(memory.clone(), 256).ok()?;
            vring.set_queue_size(self.size);
            vring
                .set_queue_info(ring.desc, ring.avail, ring.used)
                .ok()?;
            vring.set_queue_event_idx(event_idx);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            vrings.push(vring);
        }
        Some(vrings)
    }
}
