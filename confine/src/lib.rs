//! What confines each splitvisor process (docs/security.md): a seccomp filter per process,
//! built once from named groups of system calls ([`syscalls`]) and installed on every thread
//! ([`seccomp::install`]) before the process serves a guest; and for the backends, another
//! user with no capabilities once they hold their resources ([`privileges`]).
//!
//! Each binary says which groups it needs (`vmm/src/confinement.rs`,
//! `backends/src/confinement.rs`, svctl's supervisor); everything outside them — `ptrace`,
//! `mount`, `bpf`, `init_module`, `kexec_load`, `setns`, `execve` for all but the supervisor
//! — kills the process with SIGSYS (`--seccomp on`, the default), or is only logged by the
//! kernel (`--seccomp log`, to find what a filter lacks), or nothing is filtered (`off`).

pub mod privileges;
pub mod seccomp;
pub mod syscalls;

pub use api::config::SeccompMode;
