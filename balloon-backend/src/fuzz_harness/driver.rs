//! The guest driver's side of the queue harness: a small guest memory backed by a memfd of
//! its own (so that the pages the balloon gives back are punched out of this file and nothing
//! else), one split ring per queue in virtio's layout, and descriptor chains placed on them
//! exactly as the input says — addresses, lengths, flags, next indexes and buffer contents —
//! plus the hostile moves a driver can make (writing anywhere in its memory, moving its avail
//! index anywhere).
//!
//! Formats (see `input.rs` for the integers):
//! - address: `a: u16`; `a >> 14` = 0: [`DATA`] + 64 × (a & 0x3fff); 1, 2: byte-precise, from
//!   8 KiB below [`EDGES`]\[0\] or \[1\]; 3: a raw `u64` follows.
//! - descriptor: `flags: u8` (bits 0–2: NEXT, WRITE, INDIRECT; bit 7: the length is a `u32`,
//!   else a `u16`), address, length, `next: u8` (0: the following table entry; n: entry
//!   (this + 1 + n) mod 256, so 255 is itself), fill.
//! - fill (the buffer's contents): `mode: u8`, `count: u8`, `count` literal bytes, then up to
//!   the buffer's length (at most [`MAX_FILL`]): mode % 4 = 0 nothing, 1 bytes counting
//!   (i % 251), 2 zeroes, 3 little-endian `u32`s (page frame numbers) counting from a `u32`
//!   that follows.

use std::fs::File;
use std::os::fd::FromRawFd;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

use super::input::{Input, Seed};

/// Guest RAM. The rings have a region of their own, anonymous memory: the balloon cannot give
/// it back (it has no file to punch; the device says so and goes on), so a ring never turns
/// to zeroes under the device in the middle of a kick. Then two adjacent regions of the memfd
/// (a range may span both) and one after a hole. (addr, len, memfd-backed)
pub(super) const REGIONS: [(u64, usize, bool); 4] = [
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
/// The most bytes one descriptor's fill writes.
pub(super) const MAX_FILL: usize = 0x1_0100;
/// The most fill bytes one input writes in all (keeps every input fast).
const FILL_BUDGET: usize = 1 << 20;
/// Most descriptors in one chain the input lays out.
pub(super) const MAX_CHAIN: u8 = 16;

pub(super) const NEXT: u8 = 1;
pub(super) const WRITE: u8 = 2;
/// In a descriptor's flags byte: the length is a `u32`.
pub(super) const LONG: u8 = 0x80;

pub(super) fn read_addr(input: &mut Input) -> u64 {
    let a = input.u16();
    let low = u64::from(a & 0x3fff);
    match a >> 14 {
        0 => DATA + 64 * low,
        1 => EDGES[0] - 0x2000 + low,
        2 => EDGES[1] - 0x2000 + low,
        _ => input.u64(),
    }
}

pub(super) fn write_addr(seed: &mut Seed, gpa: u64) {
    let near = |edge: u64| gpa.wrapping_sub(edge - 0x2000);
    if gpa >= DATA && (gpa - DATA).is_multiple_of(64) && (gpa - DATA) / 64 <= 0x3fff {
        seed.u16(((gpa - DATA) / 64) as u16);
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

    /// Page frame numbers `start`, `start + 1`, … to the buffer's end.
    pub(super) fn pfns_from(start: u32) -> Fill {
        Fill {
            mode: 3,
            run_start: start,
            ..Fill::default()
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

impl Ring {
    /// Virtio's split ring of `size` entries at `base`: the descriptor table, the avail ring
    /// (flags, idx, ring, used_event) 2-aligned, the used ring 4-aligned.
    fn at(base: u64, size: u16) -> Ring {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        Ring {
            desc: base,
            avail,
            used,
        }
    }
}

/// A new memfd of `len` bytes (zeroes).
fn memfd(len: u64) -> Option<File> {
    // SAFETY: memfd_create reads the NUL-terminated name and takes no other pointer; the
    // result is checked before use.
    let fd = unsafe { libc::memfd_create(c"sv-balloon-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).ok()?;
    Some(file)
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
    /// Memory mapped (the memfd-backed regions from a fresh memfd, each at its own offset),
    /// rings of `size` entries (a power of two up to 128), all zeroes.
    pub(super) fn new(size: u16) -> Option<Driver> {
        let total: usize = REGIONS.iter().filter(|r| r.2).map(|r| r.1).sum();
        let file = memfd(total as u64)?;
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
        Some(Driver {
            mem,
            size,
            rings: RINGS.map(|base| Ring::at(base, size)),
            next_desc: [0; RINGS.len()],
            fill_left: FILL_BUDGET,
        })
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
            let total = (len as usize).min(MAX_FILL).min(self.fill_left);
            self.fill_left -= total;
            let buf = read_fill(input, total);
            // a buffer (partly) outside guest memory is simply not filled
            let _ = self.mem.write_slice(&buf, GuestAddress(addr));
        }
        self.next_desc[q] = (head + u16::from(count)) % self.size;
        self.publish(q, head);
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
}
