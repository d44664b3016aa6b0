//! splitvisor, the vmm: KVM, guest memory, boot, the legacy platform devices and vCPU threads.
//! See docs/architecture.md for the process split and the boot path.

pub mod api;
pub mod boot;
pub mod confinement;
/// The VM configuration lives in the `api` crate (svctl and the API share it).
pub use ::api::config;
pub mod cpu;
pub mod devices;
pub mod exit;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod hotplug;
pub mod irq_routing;
pub mod layout;
pub mod memory;
pub mod migration;
pub mod pci;
pub mod power_on;
pub mod run_control;
pub mod signals;
pub mod snapshot;
pub mod threads;
pub mod vcpu;
pub mod vcpu_hotplug;
pub mod vhost_user;
pub mod virtio;
pub mod vm;

pub use ::api::error_chain;
