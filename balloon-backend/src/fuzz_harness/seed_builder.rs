//! Building the seeds: a configuration, then operations, in the input format of `queues.rs`
//! and `driver.rs`.

use super::driver::{write_addr, Desc, Fill, DATA, NEXT};
use super::input::Seed;
use super::queues::{Config, OP_ACK, OP_AVAIL_IDX, OP_CHAIN, OP_KICK, OP_POKE};

pub(super) const INFLATE: u8 = 0;
pub(super) const DEFLATE: u8 = 1;
pub(super) const STATS: u8 = 2;
pub(super) const REPORTING: u8 = 3;

/// A 16-entry ring, stats offered (always), nothing else.
pub(super) fn config() -> Config {
    Config {
        size_log2: 4,
        ..Config::default()
    }
}

pub(super) fn reporting() -> Config {
    Config {
        reporting: true,
        ..config()
    }
}

/// Where the seeds keep their page frame number arrays and stats buffers (page 4, which no
/// seed inflates).
pub(super) fn list(n: u64) -> u64 {
    DATA + n * 0x100
}

pub(super) fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// `struct virtio_balloon_stat` entries.
pub(super) fn stat_bytes(stats: &[(u16, u64)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (tag, val) in stats {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&val.to_le_bytes());
    }
    b
}

pub(super) struct Build {
    seed: Seed,
}

impl Build {
    pub(super) fn new(config: Config) -> Build {
        let mut seed = Seed::default();
        config.write(&mut seed);
        Build { seed }
    }

    /// A chain on ring `ring` with NEXT set on all but its last descriptor.
    pub(super) fn chain(&mut self, ring: u8, descs: &[Desc]) -> &mut Self {
        self.seed.u8(OP_CHAIN).u8(ring).u8(descs.len() as u8 - 1);
        let last = descs.len() - 1;
        for (i, d) in descs.iter().enumerate() {
            let mut d = d.clone();
            if i < last {
                d.flags |= NEXT;
            }
            d.write(&mut self.seed);
        }
        self
    }

    /// One device-readable buffer at list slot `slot` holding `pfns`, on `ring`, and a kick.
    pub(super) fn pfns(&mut self, ring: u8, slot: u64, pfns: &[u32]) -> &mut Self {
        let bytes = pfn_bytes(pfns);
        let desc = Desc::new(list(slot), bytes.len() as u32, 0).fill(Fill::literal(&bytes));
        self.chain(ring, &[desc]).kick(ring)
    }

    pub(super) fn kick(&mut self, queue: u8) -> &mut Self {
        self.seed.u8(OP_KICK).u8(queue);
        self
    }

    pub(super) fn op(&mut self, op: u8) -> &mut Self {
        self.seed.u8(op);
        self
    }

    pub(super) fn ack(&mut self, bits: u8) -> &mut Self {
        self.seed.u8(OP_ACK).u8(bits);
        self
    }

    /// The driver writes `bytes` at `gpa`.
    pub(super) fn poke(&mut self, gpa: u64, bytes: &[u8]) -> &mut Self {
        self.seed.u8(OP_POKE);
        write_addr(&mut self.seed, gpa);
        self.seed.u8(bytes.len() as u8).bytes(bytes);
        self
    }

    pub(super) fn avail_idx(&mut self, ring: u8, idx: u16) -> &mut Self {
        self.seed.u8(OP_AVAIL_IDX).u8(ring).u16(idx);
        self
    }

    pub(super) fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.seed.0)
    }
}
