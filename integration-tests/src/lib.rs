//! Test tooling for splitvisor's real-guest tests.
//!
//! Real guests need a real KVM. This machine's `/dev/kvm` is PVM (a software KVM that emulates
//! guest kernel code far too slowly to boot Linux), so real-guest tests run in the **nested-KVM
//! sandbox**: an L1 Linux under `qemu-system-x86_64 -accel tcg -cpu max`, which emulates AMD SVM
//! with nested paging and so gives L1 a real kvm-amd `/dev/kvm`. Our binaries and the guest kit
//! reach L1 over virtio-9p; a test is a shell script run inside L1 (or directly on the host
//! when its KVM is hardware-backed, see [`mode::Mode`]).

pub mod blk_process;
pub mod counts;
pub mod guest;
pub mod kit;
pub mod mode;
pub mod ping;
pub mod proc_status;
pub mod sandbox;
pub mod scratch;
pub mod shell_words;
pub mod steps;
pub mod vring;

pub use kit::Kit;
pub use mode::Mode;
pub use sandbox::{shared_job, JobOutput, Sandbox, SandboxError};
