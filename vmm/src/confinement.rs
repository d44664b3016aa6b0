//! The vmm's seccomp filters (docs/security.md). The process's is installed on every thread
//! before the VM is built, so the guest never runs unfiltered: KVM and the vhost-user
//! frontend need the runtime, files (kernel, initramfs, console), Unix sockets (backends,
//! API) and `mlock`. Each vCPU thread then adds its own, stricter one as it starts: the
//! thread that runs guest code and handles its exits opens no file and makes no socket —
//! it only talks over the backends' connections it is handed.

use confine::syscalls::{FILES, KVM, RUNTIME, SOCKETS, SOCKET_IO, STACKED_FILTER, STAT};

pub use confine::seccomp::SeccompError;

/// Install the vmm's filter (`off`: none). What the filter forbids but the vmm needs once is
/// done first: the private huge-page tmpfs for guest RAM is mounted
/// ([`crate::memory::backing::prepare`]).
pub fn install(mode: crate::config::SeccompMode) -> Result<(), SeccompError> {
    crate::memory::backing::prepare();
    confine::seccomp::install(
        "splitvisor",
        mode,
        &[RUNTIME, FILES, SOCKETS, SOCKET_IO, KVM, STACKED_FILTER],
    )
}

/// What a vCPU thread keeps: the runtime, KVM, I/O on the sockets it has, and the metadata
/// of descriptors it is handed.
pub const VCPU_GROUPS: &[&[i64]] = &[RUNTIME, KVM, SOCKET_IO, STAT];

/// Confine the calling vCPU thread (`off`: nothing more).
pub fn install_vcpu(id: u8, mode: crate::config::SeccompMode) -> Result<(), SeccompError> {
    confine::seccomp::install_on_this_thread(&format!("vcpu{id}"), mode, VCPU_GROUPS)
}
