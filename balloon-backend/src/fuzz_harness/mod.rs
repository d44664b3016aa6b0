//! Fuzz harnesses: entry points that `fuzz/fuzz_targets/` call with libFuzzer's bytes and that
//! `integration-tests/tests/fuzz_corpora.rs` replays over the committed corpora. Each takes any
//! byte string and must return normally: a panic, hang or unbounded allocation here is a bug in
//! the code under test, never in the input.
//!
//! - [`queues`]: inflate, deflate, stats and free page reporting chains a driver lays out on
//!   split rings, served by the device's own `handle_event` over a guest memory of the
//!   harness's own memfd (`queues.rs`; the driver's side and its input format in `driver.rs`),
//!   or `pages.rs` alone with huge pages and every punch checked (`huge_pages.rs`);
//! - [`queues_seeds`]: the inputs its corpus starts from, named after what they do.

mod driver;
mod huge_pages;
use backends::fuzz_harness::bytes as input;
mod queues;
mod seed_builder;
mod seeds;
pub mod vhost_user;

/// Run one input (see `queues.rs` for its format) through the balloon's queues.
pub fn queues(data: &[u8]) {
    queues::run(data);
}

/// The seeds of the `balloon_queues` corpus: (file name, input).
pub fn queues_seeds() -> Vec<(String, Vec<u8>)> {
    seeds::all()
}

#[cfg(test)]
mod tests;
