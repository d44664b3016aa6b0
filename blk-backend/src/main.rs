//! `splitvisor-blk`: command line → [`Config`] → [`start_backend`].

use std::path::PathBuf;
use std::process::ExitCode;

use backends::serve::DaemonArgs;
use blk_backend::disk::Format;
use blk_backend::{start_backend, Config};
use clap::Parser;

/// vhost-user-blk backend serving a raw or qcow2 disk image.
#[derive(Debug, Parser)]
#[command(name = "splitvisor-blk", version)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// The disk image (a file or a block device).
    #[arg(long, value_name = "PATH")]
    image: PathBuf,
    /// Image format; `auto` detects it from the file's header.
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// Serve the image read-only: the guest sees a read-only disk, writes fail.
    #[arg(long)]
    readonly: bool,
    /// Bypass the host page cache (O_DIRECT).
    #[arg(long)]
    direct: bool,
    /// Number of request queues.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Worker threads serving the queues (queue q on thread q mod N). Default: one per
    /// queue, but no more than the host's CPUs.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Descriptors per queue.
    #[arg(long, default_value_t = 256)]
    queue_size: usize,
    /// I/O engine for raw images: `uring` (asynchronous, many requests in flight per queue)
    /// or `sync` (one request at a time per queue). qcow2 always runs synchronously.
    #[arg(long, value_enum, default_value = "uring")]
    io_engine: IoEngine,
    /// Serial number reported to the guest (up to 20 bytes; /sys/block/vdX/serial).
    #[arg(long, value_name = "ID", default_value = "")]
    serial: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum IoEngine {
    Uring,
    Sync,
}

impl From<Args> for Config {
    fn from(a: Args) -> Config {
        Config {
            image: a.image,
            format: a.format,
            readonly: a.readonly,
            direct: a.direct,
            queues: a.queues,
            threads: a.threads,
            queue_size: a.queue_size,
            serial: a.serial,
            uring: a.io_engine == IoEngine::Uring,
            daemon: a.daemon,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let policy = args.daemon.sched;
    backends::run_main("splitvisor-blk", policy, || start_backend(args.into()))
}
