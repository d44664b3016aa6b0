//! `splitvisor-balloon`'s configuration (docs/backends.md), and the client side of its
//! control socket (the vmm's API and the backend's own `ctl` use it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{defaults_from_clap, DaemonConfig};

/// The longest reply a control-socket client reads (statistics and counters are well under
/// 4 KiB).
pub const MAX_CONTROL_REPLY: usize = 64 << 10;

/// One request to the control socket at `path` (one JSON line each way); the reply must come
/// whole within `timeout` and be at most [`MAX_CONTROL_REPLY`] bytes. The error names the
/// socket.
pub fn control_request(
    path: &Path,
    req: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let what = |e: &dyn std::fmt::Display| {
        format!("balloon backend (control socket {}): {e}", path.display())
    };
    let reply = crate::line::exchange(path, &req.to_string(), timeout, MAX_CONTROL_REPLY)
        .map_err(|e| what(&e))?;
    serde_json::from_slice(&reply).map_err(|e| what(&format!("answered badly: {e}")))
}

/// vhost-user balloon backend that returns the guest's free memory to the host.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalloonBackendConfig {
    #[command(flatten)]
    pub daemon: DaemonConfig,
    /// Serve the JSON control socket (set the target, read the guest's statistics) here.
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest takes pages back instead of OOM-killing.
    #[arg(long)]
    pub deflate_on_oom: bool,
    /// Offer free page reporting: the guest reports free memory, which goes back to the host.
    #[arg(long)]
    pub free_page_reporting: bool,
    /// Ask the guest for its statistics every SECS seconds and log them (0: only when asked).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,
}

defaults_from_clap!(BalloonBackendConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_config() {
        let c: BalloonBackendConfig =
            serde_json::from_str(r#"{"control": "/c.sock", "daemon": {"socket": "/b.sock"}}"#)
                .unwrap();
        assert_eq!(c.daemon.socket, Some("/b.sock".into()));
        assert_eq!(c.stats_interval, 0);
        assert!(!c.deflate_on_oom);
    }
}
