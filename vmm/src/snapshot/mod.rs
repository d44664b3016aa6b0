//! Snapshots: the running VM written to a directory (`vm.snapshot`, [`save`]) and a new VM
//! built from one (`splitvisor --restore`, [`restore`] with `Vm::restore`). The state file's
//! format is [`format`] (named sections, each with its version and CRC); what is in it:
//! each vCPU ([`vcpu_state`], its MSRs in [`msrs`], what this KVM can save in [`caps`]), the
//! interrupt controllers, PIT and clock ([`platform`]), the console, the PCI latch and each
//! device's transport and rings (their modules' `persist.rs`); guest RAM is a sparse file of
//! its own ([`memory`]). A restore first checks that this host shows every CPU feature the
//! guest was shown ([`cpuid_check`]). docs/architecture.md has the order of operations.

pub mod caps;
pub mod cpuid_check;
pub mod format;
pub mod memory;
pub mod msrs;
pub mod platform;
pub mod restore;
pub mod save;
pub mod vcpu_state;
