//! For the harnesses' unit tests: pseudo-random numbers that are the same on every run, inputs
//! made from the seeds the way a byte-level fuzzer would, and what every list of seeds must be.

use std::time::{Duration, Instant};

use super::Seeds;

/// xorshift64: the same "random" numbers on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// `per_seed` mutations of each seed (one to four bits flipped, bytes set or bytes inserted),
/// then `random` strings of random bytes shorter than 400, all drawn from `rng`.
pub fn byte_mutations(
    seeds: &[(String, Vec<u8>)],
    rng: &mut Rng,
    per_seed: usize,
    random: usize,
) -> Vec<Vec<u8>> {
    let mut inputs = Vec::new();
    for (_, input) in seeds {
        for _ in 0..per_seed {
            let mut m = input.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len() + 1);
                match rng.below(3) {
                    0 if i < m.len() => m[i] ^= 1 << rng.below(8),
                    1 if i < m.len() => m[i] = rng.next_u64() as u8,
                    _ => m.insert(i, rng.next_u64() as u8),
                }
            }
            inputs.push(m);
        }
    }
    for _ in 0..random {
        let len = rng.below(400);
        inputs.push((0..len).map(|_| rng.next_u64() as u8).collect());
    }
    inputs
}

/// Whether `name` can be a seed's name: part of a file name (`seed-<name>`), `[a-z0-9-]+`.
pub fn is_seed_name(name: &str) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    !name.is_empty() && name.bytes().all(ok)
}

/// Every seed has a file name of its own and runs through `harness` within `budget`.
pub fn check_seeds(seeds: &[(String, Vec<u8>)], harness: impl Fn(&[u8]), budget: Duration) {
    let mut names: Vec<_> = seeds.iter().map(|(n, _)| n.clone()).collect();
    for name in &names {
        assert!(is_seed_name(name), "{name}");
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), seeds.len(), "seed names are unique");
    for (name, input) in seeds {
        let start = Instant::now();
        harness(input);
        let took = start.elapsed();
        assert!(took < budget, "{name}: {took:?}");
    }
}

/// The input of the seed named `name` (a test's mistake when there is none).
pub fn seed_named(seeds: Seeds, name: &str) -> Vec<u8> {
    seeds
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no seed {name}"))
        .1
}
