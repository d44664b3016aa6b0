//! `splitvisor-blk`'s configuration (docs/backends.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{defaults_from_clap, DaemonConfig, DEFAULT_QUEUE_SIZE};

/// Image formats the blk backend opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
    /// Detect it from the file's header.
    #[default]
    Auto,
}

/// How requests reach a raw image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    /// io_uring: asynchronous, many requests in flight per queue.
    #[default]
    Uring,
    /// One request at a time per queue.
    Sync,
}

/// vhost-user-blk backend serving a raw or qcow2 disk image.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlkBackendConfig {
    #[command(flatten)]
    pub daemon: DaemonConfig,
    /// The disk image (a file or a block device).
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// Image format; `auto` detects it from the file's header, and then refuses to follow a
    /// qcow2 backing file and, on a raw image, guest writes that would make the first sector
    /// another format's header (QEMU's rule).
    #[arg(long, value_enum, default_value_t = ImageFormat::Auto)]
    pub format: ImageFormat,
    /// A directory backing files named in a qcow2 header may come from (repeatable); default:
    /// the image's own directory. Backing chains are followed only with an explicit
    /// `--format qcow2` and a backing format named in each header.
    #[arg(long = "backing-dir", value_name = "DIR")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backing_dir: Vec<PathBuf>,
    /// Serve the image read-only: the guest sees a read-only disk, writes fail.
    #[arg(long)]
    pub readonly: bool,
    /// Bypass the host page cache (O_DIRECT).
    #[arg(long)]
    pub direct: bool,
    /// Number of request queues.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Worker threads serving the queues (queue q on thread q mod N). Default: one per
    /// queue, but no more than the host's CPUs.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Descriptors per queue.
    #[arg(long, default_value_t = usize::from(DEFAULT_QUEUE_SIZE))]
    pub queue_size: usize,
    /// I/O engine for raw images: `uring` (asynchronous, many requests in flight per queue)
    /// or `sync` (one request at a time per queue). qcow2 always runs synchronously.
    #[arg(long, value_enum, default_value_t = IoEngine::Uring)]
    pub io_engine: IoEngine,
    /// Serial number reported to the guest (up to 20 bytes; /sys/block/vdX/serial).
    #[arg(long, value_name = "ID", default_value = "")]
    pub serial: String,
    /// Serve the JSON control socket (flush; internal snapshots of a qcow2 image; `reopen`
    /// onto a new overlay) here.
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
    /// The directory the control socket's `reopen` makes overlays in (external snapshots);
    /// the only place the confined backend may create files.
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_dir: Option<PathBuf>,
}

/// One request to the blk backend's control socket at `path` ([`super::control_request`]).
pub fn control_request(
    path: &std::path::Path,
    req: &serde_json::Value,
    timeout: std::time::Duration,
) -> Result<serde_json::Value, String> {
    super::control_request("blk", path, req, timeout)
}

defaults_from_clap!(BlkBackendConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_command_line_defaults_agree() {
        let c: BlkBackendConfig =
            serde_json::from_str(r#"{"image": "/d.qcow2", "format": "qcow2"}"#).unwrap();
        assert_eq!(c.format, ImageFormat::Qcow2);
        assert_eq!((c.queues, c.queue_size), (1, 256));
        assert_eq!(c.io_engine, IoEngine::Uring);
        let back: BlkBackendConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<BlkBackendConfig>(r#"{"format": "vmdk"}"#).is_err());
    }
}
