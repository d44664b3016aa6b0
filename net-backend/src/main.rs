//! `splitvisor-net`: command line → [`Config`] → [`start_backend`].

use std::process::ExitCode;

use backends::serve::DaemonArgs;
use clap::Parser;
use net_backend::virtio_net::parse_mac;
use net_backend::{start_backend, Config, TapSource};

/// vhost-user-net backend in front of a tap device.
#[derive(Debug, Parser)]
#[command(name = "splitvisor-net", version)]
#[command(group(clap::ArgGroup::new("tap-source").required(true).args(["tap", "create_tap"])))]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Use this existing tap device (multi-queue when --queues > 1).
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
    /// Create a tap device with this name (it goes away when the backend exits).
    #[arg(long, value_name = "NAME")]
    create_tap: Option<String>,
    /// Make the created tap a port of this bridge.
    #[arg(long, value_name = "BRIDGE", requires = "create_tap")]
    bridge: Option<String>,
    /// The guest's MAC address [default: 52:54:00 + 3 random bytes].
    #[arg(long, value_name = "MAC", value_parser = mac)]
    mac: Option<[u8; 6]>,
    /// MTU of the link (tap and guest).
    #[arg(long, default_value_t = 1500)]
    mtu: u16,
    /// Number of queue pairs (one worker thread and one tap queue each).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Descriptors per queue.
    #[arg(long, default_value_t = 256)]
    queue_size: usize,
}

fn mac(s: &str) -> Result<[u8; 6], String> {
    parse_mac(s).ok_or_else(|| format!("{s:?} is not a unicast MAC address like 52:54:00:12:34:56"))
}

/// A locally chosen address in QEMU's 52:54:00 range, different for each backend process.
fn random_mac() -> [u8; 6] {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(12);
    let b = seed.to_le_bytes();
    [0x52, 0x54, 0x00, b[0], b[1], b[2]]
}

impl From<Args> for Config {
    fn from(a: Args) -> Config {
        let tap = match (a.tap, a.create_tap) {
            (Some(name), _) => TapSource::Existing(name),
            (None, Some(name)) => TapSource::Create {
                name,
                bridge: a.bridge,
            },
            (None, None) => unreachable!("clap requires --tap or --create-tap"),
        };
        Config {
            tap,
            mac: a.mac.unwrap_or_else(random_mac),
            mtu: a.mtu,
            queues: a.queues,
            queue_size: a.queue_size,
            daemon: a.daemon,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let policy = args.daemon.sched;
    backends::run_main("splitvisor-net", policy, || start_backend(args.into()))
}
