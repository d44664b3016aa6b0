//! The vmm's threads: named, with stacks smaller than a 2 MiB huge page.
//!
//! Rust's default thread stack is 2 MiB. Guest RAM's mapping is 2 MiB-aligned (it is in huge
//! pages, see [`crate::memory::backing`]) and mappings made after it tend to land aligned
//! too; on a host whose transparent huge pages are `always`, a 2 MiB stack so aligned gets one
//! huge page at its first touch, and the thread then costs 2 MiB of RSS instead of a few KiB
//! (seen in bench/boot.sh: one short-lived thread's stack added 2 MiB to the VMM overhead,
//! docs/benchmarks.md). 1 MiB is far more than any of these threads uses and can never hold a
//! huge page.
pub const STACK_SIZE: usize = 1 << 20;

/// A builder for a vmm thread called `name`.
pub fn builder(name: impl Into<String>) -> std::thread::Builder {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK_SIZE)
}
