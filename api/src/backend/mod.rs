//! Each backend process's configuration as one serde type: parsed from its command line (the
//! same struct derives the clap options) or read as JSON with `--config FILE`, and built by
//! svctl from a domain file, so the supervisor hands a backend a config instead of writing an
//! argv by hand. Defaults live in the clap attributes only: [`clap_defaults`] is what serde
//! fills a missing field with, so the command line and a JSON file can never disagree.

pub mod balloon;
pub mod blk;
mod config_file;
pub mod net;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use config_file::{load_with_file, ConfigFileError};

/// The longest reply a control-socket client reads (balloon statistics, a disk's snapshot
/// list are well under it).
pub const MAX_CONTROL_REPLY: usize = 64 << 10;

/// One request to the control socket at `path` of the named backend (one JSON line each way); the reply must come
/// whole within `timeout` and be at most [`MAX_CONTROL_REPLY`] bytes. The error names the
/// socket.
pub fn control_request(
    backend: &str,
    path: &Path,
    req: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let what = |e: &dyn std::fmt::Display| {
        format!("{backend} backend (control socket {}): {e}", path.display())
    };
    let reply = crate::line::exchange(path, &req.to_string(), timeout, MAX_CONTROL_REPLY)
        .map_err(|e| what(&e))?;
    serde_json::from_slice(&reply).map_err(|e| what(&format!("answered badly: {e}")))
}

/// Descriptors per virtqueue unless configured otherwise (the vmm's devices and every backend).
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

/// Whether a backend limits its own file access with Landlock once its resources are open
/// (`--landlock`, docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LandlockMode {
    /// Restrict, where the kernel has Landlock (a kernel without it is reported).
    #[default]
    On,
    /// Leave file access to the user and the unit.
    Off,
}

/// Which scheduling policy a backend's threads run under (docs/backends.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedPolicy {
    /// `SCHED_BATCH`: a woken worker does not preempt the running vCPU.
    Batch,
    /// `SCHED_OTHER`: the normal policy (a woken worker may preempt).
    Other,
    /// `SCHED_BATCH`, except a block worker whose guest waits on one request at a time: that
    /// worker switches itself to `SCHED_OTHER` until the guest queues more (net and balloon
    /// threads stay `SCHED_BATCH`).
    #[default]
    Auto,
}

/// The options every backend daemon takes besides its device options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Path of the vhost-user socket to create and listen on (a stale socket left there is
    /// replaced; anything else there is refused).
    #[arg(long, value_name = "PATH", conflicts_with = "socket_fd")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Listen on this already-bound listening socket instead (inherited descriptor). With
    /// neither option, systemd socket activation (`LISTEN_FDS`) is used when present.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_fd: Option<i32>,
    /// Write our PID here once the socket accepts connections (removed at exit).
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<PathBuf>,
    /// Exit after the first frontend disconnects instead of waiting for the next one.
    #[arg(long)]
    pub once: bool,
    /// Serve the counters on this Unix socket: each connection gets them as `key=value` text.
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_socket: Option<PathBuf>,
    /// Scheduling policy of the threads: `batch` keeps a worker that a guest's kick wakes from
    /// preempting the vCPU that kicked; `auto` is `batch` but for a block worker whose guest
    /// waits on each request, which runs at once (`other`) (see docs/backends.md).
    #[arg(long, value_enum, default_value_t = SchedPolicy::Auto)]
    pub sched: SchedPolicy,
    /// Once the device's resources (image, tap, sockets) are open, become this user
    /// (`USER[:GROUP]`, names or numbers): no capabilities are left (docs/security.md).
    #[arg(long, value_name = "USER[:GROUP]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The process's seccomp filter: `on` kills it on a system call it does not need, `log`
    /// only has the kernel log such calls, `off` filters nothing (docs/security.md).
    #[arg(long, value_enum, default_value_t = crate::config::SeccompMode::On)]
    pub seccomp: crate::config::SeccompMode,
    /// Once its resources are open, the backend can reach no file by name but its relay
    /// directory and the files it removes at exit (Landlock; `off`: not restricted).
    #[arg(long, value_enum, default_value_t = LandlockMode::On)]
    pub landlock: LandlockMode,
}

/// The value of `T` when no option is given: the defaults of its clap attributes.
pub fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("a backend's options all have defaults or are optional");
    T::from_arg_matches(&matches).expect("defaults convert")
}

macro_rules! defaults_from_clap {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                $crate::backend::clap_defaults()
            }
        }
    )*};
}
pub(crate) use defaults_from_clap;

defaults_from_clap!(DaemonConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_json_object_is_the_command_line_with_no_options() {
        let d: DaemonConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(d, DaemonConfig::default());
        assert_eq!(d.sched, SchedPolicy::Auto);
        assert!(d.socket.is_none() && !d.once);
        assert!(serde_json::from_str::<DaemonConfig>(r#"{"sockt": "/x"}"#).is_err());
    }
}
