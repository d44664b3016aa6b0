//! The seeds' side of the queue harnesses' driver (`guest_driver.rs` reads what this writes):
//! buffer fills, descriptors, and a seed being written with the driver's operations — chains,
//! writes anywhere, avail index moves — under the operation codes its harness gives them.

use super::bytes::Seed;
use super::guest_driver::{Layout, LONG, NEXT};

/// What a buffer is filled with (the seeds' side of the fill format).
#[derive(Clone, Default)]
pub struct Fill {
    pub mode: u8,
    pub literal: Vec<u8>,
    pub run_start: u32,
}

impl Fill {
    pub fn literal(bytes: &[u8]) -> Fill {
        Fill {
            literal: bytes.to_vec(),
            ..Fill::default()
        }
    }

    /// `bytes`, then bytes counting up to the buffer's end.
    pub fn counting(bytes: &[u8]) -> Fill {
        Fill {
            mode: 1,
            ..Fill::literal(bytes)
        }
    }

    /// Little-endian `u32`s `start`, `start + 1`, … to the buffer's end (page frame numbers).
    pub fn u32s_from(start: u32) -> Fill {
        Fill {
            mode: 3,
            run_start: start,
            ..Fill::default()
        }
    }

    pub fn write(&self, seed: &mut Seed) {
        seed.u8(self.mode).u8(self.literal.len() as u8);
        seed.bytes(&self.literal[..self.literal.len().min(255)]);
        if self.mode % 4 == 3 {
            seed.u32(self.run_start);
        }
    }
}

/// One descriptor as the seeds write it.
#[derive(Clone)]
pub struct Desc {
    pub flags: u8,
    pub addr: u64,
    pub len: u32,
    pub next: u8,
    pub fill: Fill,
}

impl Desc {
    pub fn new(addr: u64, len: u32, flags: u8) -> Desc {
        Desc {
            flags,
            addr,
            len,
            next: 0,
            fill: Fill::default(),
        }
    }

    pub fn fill(mut self, fill: Fill) -> Desc {
        self.fill = fill;
        self
    }

    pub fn write(&self, layout: &Layout, seed: &mut Seed) {
        let long = self.len > u32::from(u16::MAX);
        seed.u8(self.flags | if long { LONG } else { 0 });
        layout.write_addr(seed, self.addr);
        if long {
            seed.u32(self.len);
        } else {
            seed.u16(self.len as u16);
        }
        seed.u8(self.next);
        self.fill.write(seed);
    }
}

/// A split descriptor's 16 bytes as the guest writes them (for an indirect table).
pub fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

/// The operation codes a harness gives the driver's moves.
#[derive(Clone, Copy, Debug)]
pub struct DriverOps {
    /// A chain: `ring: u8`, then the chain.
    pub chain: u8,
    /// The driver writes bytes: an address, `n: u8`, `n` bytes.
    pub poke: u8,
    /// The driver sets a ring's avail index: `ring: u8`, `idx: u16`.
    pub avail_idx: u8,
}

/// A seed being written: its harness's configuration bytes, then operations. Each harness adds
/// its own operations with a trait of its own on this type.
pub struct DriverSeed {
    pub seed: Seed,
    layout: Layout,
    ops: DriverOps,
}

impl DriverSeed {
    pub fn new(layout: Layout, ops: DriverOps) -> DriverSeed {
        DriverSeed {
            seed: Seed::default(),
            layout,
            ops,
        }
    }

    /// A chain on ring `ring` with NEXT set on all but its last descriptor.
    pub fn chain(&mut self, ring: usize, descs: &[Desc]) -> &mut Self {
        let mut descs = descs.to_vec();
        let last = descs.len().saturating_sub(1);
        for d in &mut descs[..last] {
            d.flags |= NEXT;
        }
        self.raw_chain(ring, &descs)
    }

    /// A chain exactly as given (flags and next fields included).
    pub fn raw_chain(&mut self, ring: usize, descs: &[Desc]) -> &mut Self {
        let count = descs.len() as u8 - 1;
        self.seed.u8(self.ops.chain).u8(ring as u8).u8(count);
        for d in descs {
            d.write(&self.layout, &mut self.seed);
        }
        self
    }

    /// The driver writes `bytes` at `gpa`.
    pub fn poke(&mut self, gpa: u64, bytes: &[u8]) -> &mut Self {
        self.seed.u8(self.ops.poke);
        self.layout.write_addr(&mut self.seed, gpa);
        self.seed.u8(bytes.len() as u8).bytes(bytes);
        self
    }

    /// The driver sets ring `ring`'s avail index.
    pub fn avail_idx(&mut self, ring: usize, idx: u16) -> &mut Self {
        self.seed.u8(self.ops.avail_idx).u8(ring as u8).u16(idx);
        self
    }

    /// An operation without operands.
    pub fn op(&mut self, op: u8) -> &mut Self {
        self.seed.u8(op);
        self
    }

    /// The input, taken (the builder is left empty).
    pub fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.seed.0)
    }
}
