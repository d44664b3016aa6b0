//! Snapshots (issue 27, in progress): the VM's state saved to files and read back into a new
//! VM. What is here so far: the state file's format ([`format`]: versioned sections, each
//! with its CRC), the host's capabilities ([`caps`]) and each vCPU's state ([`vcpu_state`],
//! with its MSRs in [`msrs`]). The rest of the plan (the interrupt controllers and clock,
//! guest RAM written sparsely, the devices and their backends' state, `vm.snapshot` /
//! `vm.restore`) builds on these.

pub mod caps;
pub mod cpuid_check;
pub mod format;
pub mod memory;
pub mod msrs;
pub mod platform;
pub mod restore;
pub mod save;
pub mod vcpu_state;
