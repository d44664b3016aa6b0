//! The vmm's seccomp filter (docs/security.md): installed on every thread before the VM is
//! built, so the guest never runs unfiltered. KVM and the vhost-user frontend need the
//! runtime, files (kernel, initramfs, console), Unix sockets (backends, API) and `mlock`.

use confine::syscalls::{FILES, KVM, RUNTIME, SOCKETS};

pub use confine::seccomp::SeccompError;

/// Install the vmm's filter (`off`: none).
pub fn install(mode: crate::config::SeccompMode) -> Result<(), SeccompError> {
    confine::seccomp::install("splitvisor", mode, &[RUNTIME, FILES, SOCKETS, KVM])
}
