//! Building the seeds: a configuration, then operations, in the input format of `queues.rs`
//! and `driver.rs`.

use backends::fuzz_harness::driver_seed::{Desc, DriverSeed, Fill};

use super::driver::{self, DATA};
use super::queues::{Config, OP_ACK, OP_KICK};

/// The queues (and rings), by index.
pub(super) const INFLATE: usize = 0;
pub(super) const DEFLATE: usize = 1;
pub(super) const STATS: usize = 2;
pub(super) const REPORTING: usize = 3;

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

/// A seed for `config`: its configuration bytes, operations to follow.
pub(super) fn build(config: Config) -> DriverSeed {
    let mut b = driver::seed();
    config.write(&mut b.seed);
    b
}

/// The seeds' side of this harness's own operations.
pub(super) trait BalloonSeed {
    /// One device-readable buffer at list slot `slot` holding `pfns`, on `ring`, and a kick.
    fn pfns(&mut self, ring: usize, slot: u64, pfns: &[u32]) -> &mut Self;
    /// A kick of queue `queue` (any number: unknown queues too).
    fn kick(&mut self, queue: usize) -> &mut Self;
    /// The driver acks features (`bits` as `queues.rs` says).
    fn ack(&mut self, bits: u8) -> &mut Self;
}

impl BalloonSeed for DriverSeed {
    fn pfns(&mut self, ring: usize, slot: u64, pfns: &[u32]) -> &mut Self {
        let bytes = pfn_bytes(pfns);
        let desc = Desc::new(list(slot), bytes.len() as u32, 0).fill(Fill::literal(&bytes));
        self.chain(ring, &[desc]).kick(ring)
    }

    fn kick(&mut self, queue: usize) -> &mut Self {
        self.seed.u8(OP_KICK).u8(queue as u8);
        self
    }

    fn ack(&mut self, bits: u8) -> &mut Self {
        self.seed.u8(OP_ACK).u8(bits);
        self
    }
}
