//! Fuzz harnesses: entry points that `fuzz/fuzz_targets/` call with libFuzzer's bytes and that
//! `integration-tests/tests/fuzz_corpora.rs` replays over the committed corpora. Each takes any
//! byte string and must return normally: a panic, hang or unbounded allocation here is a bug in
//! the code under test, never in the input.
//!
//! - [`queues`]: receive, transmit and control chains a driver lays out on split rings, served
//!   by the crate's rx, tx, flow and ctrl code against a fake tap (`queues.rs`), or by the
//!   device itself over a stand-in tap (`device.rs`); the driver's side and its input format
//!   in `driver.rs`;
//! - [`queues_seeds`]: the inputs its corpus starts from, named after what they do.

mod device;
mod driver;
mod fake_tap;
use backends::fuzz_harness::bytes as input;
mod queues;
mod seed_builder;
mod seeds;
pub mod vhost_user;

/// Run one input (see `queues.rs` for its format) through the net device's queues.
pub fn queues(data: &[u8]) {
    queues::run(data);
}

/// The seeds of the `net_queues` corpus: (file name, input).
pub fn queues_seeds() -> Vec<(String, Vec<u8>)> {
    seeds::all()
}

#[cfg(test)]
mod tests;
