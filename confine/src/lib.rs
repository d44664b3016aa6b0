//! What confines each splitvisor process (docs/security.md): a seccomp filter per process,
//! built once from named groups of system calls ([`syscalls`]) and installed on every thread
//! ([`seccomp::install`]) before the process serves a guest, with a stricter one stacked on
//! threads that need less ([`seccomp::install_on_this_thread`]: the vmm's vCPUs); and for the
//! backends, once they hold their resources, another user with no capabilities
//! ([`privileges`]) and no file reachable by name but the few they still need
//! ([`file_access`], Landlock).
//!
//! Each binary says which groups it needs (`vmm/src/confinement.rs`,
//! `backends/src/confinement.rs`, svctl's supervisor); everything outside them — `ptrace`,
//! `mount`, `bpf`, `init_module`, `kexec_load`, `setns`, `execve` for all but the supervisor
//! — kills the process with SIGSYS (`--seccomp on`, the default), or is only logged by the
//! kernel (`--seccomp log`, to find what a filter lacks), or nothing is filtered (`off`).

pub mod file_access;
pub mod privileges;
pub mod seccomp;
pub mod syscalls;

pub use api::config::SeccompMode;
