//! A backend's confinement (docs/security.md). Its seccomp filter is installed on every thread
//! before the image, tap or socket is opened: the three backends share it (the runtime,
//! files, Unix sockets and the tap's, io_uring for blk's raw images, and the calls that give
//! privileges up). With `--user`, the backend becomes that user once its resources are open
//! ([`drop_privileges`]), which leaves it no capabilities.

use confine::syscalls::{FILES, IO_URING, PRIVILEGES, RUNTIME, SOCKETS};

pub use confine::seccomp::SeccompError;

/// Install backend `name`'s filter (`off`: none).
pub fn install(name: &str, mode: api::config::SeccompMode) -> Result<(), SeccompError> {
    confine::seccomp::install(name, mode, &[RUNTIME, FILES, SOCKETS, IO_URING, PRIVILEGES])
}

/// `--user USER[:GROUP]`: become that user (no capabilities left after).
pub fn drop_privileges(name: &str, user: &str) -> Result<(), confine::privileges::PrivilegeError> {
    let id = confine::privileges::resolve(user)?;
    confine::privileges::become_user(&id)?;
    tracing::info!(
        "{name}: running as {} (uid {}, gid {}), no capabilities",
        id.user,
        id.uid,
        id.gid
    );
    if let Some(path) = std::env::var_os(SELFTEST_OPEN_ENV) {
        // a test's way to see what the confined process can no longer reach
        let result = std::fs::File::open(&path).map(|_| "opened".to_string());
        let shown = result.unwrap_or_else(|e| format!("refused: {e}"));
        tracing::warn!("{name}: selftest: open {}: {shown}", path.to_string_lossy());
    }
    Ok(())
}

/// The environment variable naming a file a backend tries to open right after giving its
/// privileges up, logging the outcome (tests: integration-tests/tests/seccomp.rs).
pub const SELFTEST_OPEN_ENV: &str = "SPLITVISOR_SELFTEST_OPEN";
