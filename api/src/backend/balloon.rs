//! `splitvisor-balloon`'s configuration (docs/backends.md), and the client side of its
//! control socket (the vmm's API and the backend's own `ctl` use it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{defaults_from_clap, DaemonConfig};

/// One request to the balloon's control socket at `path` ([`super::control_request`]).
pub fn control_request(
    path: &Path,
    req: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    super::control_request("balloon", path, req, timeout)
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
