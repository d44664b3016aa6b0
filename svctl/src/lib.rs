//! The parts of `svctl` other crates use: the domain schema (for the fuzz harness over domain
//! files). Everything else — store, supervisor, console, verbs — is the `svctl` binary's.

pub mod cpulist;
pub mod domain;
#[doc(hidden)]
pub mod fuzz_harness;
