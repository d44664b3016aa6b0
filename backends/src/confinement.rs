//! A backend's seccomp filter (docs/security.md): installed on every thread before the image,
//! tap or socket is opened. The three backends share it: the runtime, files, Unix sockets
//! (and the tap's), io_uring (blk's raw images).

use confine::syscalls::{FILES, IO_URING, RUNTIME, SOCKETS};

pub use confine::seccomp::SeccompError;

/// Install backend `name`'s filter (`off`: none).
pub fn install(name: &str, mode: api::config::SeccompMode) -> Result<(), SeccompError> {
    confine::seccomp::install(name, mode, &[RUNTIME, FILES, SOCKETS, IO_URING])
}
