//! A backend's confinement (docs/security.md). Its seccomp filter is installed on every thread
//! before the image, tap or socket is opened: the three backends share it (the runtime,
//! files, Unix sockets and the tap's, io_uring for blk's raw images, and the calls that give
//! privileges up). Once its resources are open, and before it starts any thread, it becomes
//! `--user` ([`drop_privileges`], no capabilities left) and gives up every file it could
//! reach by name but its relay directory and what it removes at exit ([`restrict_files`]).

use std::path::{Path, PathBuf};

use api::backend::LandlockMode;
use confine::file_access::{Enforced, FileAccessError, Grant, Prepared};
use confine::syscalls::{FILES, IO_URING, PRIVILEGES, RUNTIME, SOCKETS, SOCKET_IO};

pub use confine::seccomp::SeccompError;

/// Install backend `name`'s filter (`off`: none).
pub fn install(name: &str, mode: api::config::SeccompMode) -> Result<(), SeccompError> {
    confine::seccomp::install(
        name,
        mode,
        &[RUNTIME, FILES, SOCKETS, SOCKET_IO, IO_URING, PRIVILEGES],
    )
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
    Ok(())
}

/// `--landlock on`: the rules [`restrict_files`] puts in force, built while the process can
/// still open the directories (before the user switch): no file reachable by name but
/// beneath the temporary directory (each connection's relay directory is made and removed
/// there) and removing the files in `leaves` (sockets and pidfile, at exit).
pub fn prepare_files(
    name: &str,
    mode: LandlockMode,
    leaves: &[&Path],
    image_dirs: &[PathBuf],
) -> Result<Option<Prepared>, FileAccessError> {
    if mode == LandlockMode::Off {
        tracing::warn!("{name}: --landlock off: file access is not restricted");
        return Ok(None);
    }
    let mut grants = vec![Grant::scratch(std::env::temp_dir())];
    let mut dirs: Vec<PathBuf> = leaves
        .iter()
        .filter_map(|p| p.parent())
        .map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d.to_path_buf()
            }
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    grants.extend(dirs.into_iter().map(Grant::remove_files));
    grants.extend(image_dirs.iter().cloned().map(Grant::images));
    confine::file_access::prepare(&grants).map(Some)
}

/// From here on (this thread and every one it starts), only what [`prepare_files`] allowed.
pub fn restrict_files(
    name: &str,
    prepared: Option<Prepared>,
) -> Result<Option<Enforced>, FileAccessError> {
    prepared
        .map(|p| confine::file_access::restrict(name, p))
        .transpose()
}

/// With [`SELFTEST_OPEN_ENV`] set: try to open that file now (once confined) and log the
/// outcome — a test's way to see what the backend can no longer reach.
pub fn selftest_open(name: &str) {
    if let Some(path) = std::env::var_os(SELFTEST_OPEN_ENV) {
        let result = std::fs::File::open(&path).map(|_| "opened".to_string());
        let shown = result.unwrap_or_else(|e| format!("refused: {e}"));
        tracing::warn!("{name}: selftest: open {}: {shown}", path.to_string_lossy());
    }
}

/// The environment variable naming a file a backend tries to open once confined, logging
/// the outcome (tests: integration-tests/tests/seccomp.rs).
pub const SELFTEST_OPEN_ENV: &str = "SPLITVISOR_SELFTEST_OPEN";
