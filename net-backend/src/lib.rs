//! `splitvisor-net`: a vhost-user-net device process in front of a tap device.
//!
//! Layout: `main.rs` parses the command line into a [`Config`]; [`start_backend`] opens the
//! tap and runs the shared serve loop from `backends`; `vhu_net.rs` is the vhost-user face
//! (features, config space, worker threads); `rx.rs` and `tx.rs` move packets (`flow.rs`
//! picks the tap queue a guest packet goes out on), `ctrl.rs`
//! serves the control queue, `tap.rs` talks to the kernel's tap driver.

mod announce;
pub mod ctrl;
pub mod flow;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod rx;
mod saved_state;
pub mod stats;
pub mod tap;
pub mod tx;
pub mod vhu_net;
pub mod virtio_net;

#[cfg(test)]
mod queue_tests;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use backends::serve::{self, BackendFactory, DaemonConfig, ServeError};
use vhost_user_backend::VringEpollHandler;

use crate::stats::NetStats;
use crate::tap::{Tap, TapError};
use crate::vhu_net::VhostUserNet;
use crate::virtio_net::{format_mac, NetConfig, VIRTIO_NET_S_LINK_UP};

/// Where the tap comes from.
#[derive(Debug, Clone)]
pub enum TapSource {
    /// An existing tap (made by `ip tuntap add ... multi_queue` or a management tool).
    Existing(String),
    /// Create it here, optionally as a port of a bridge; it goes away with the process.
    Create {
        name: String,
        bridge: Option<String>,
    },
    /// Queues another process opened and passed down (`--tap-fd`, one per queue pair).
    Fds(Vec<RawFd>),
}

/// What the backend serves and how.
#[derive(Debug, Clone)]
pub struct Config {
    pub tap: TapSource,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub queues: usize,
    pub queue_size: usize,
    pub daemon: DaemonConfig,
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

impl TryFrom<api::backend::net::NetBackendConfig> for Config {
    type Error = Error;
    fn try_from(c: api::backend::net::NetBackendConfig) -> Result<Config, Error> {
        let tap = match (c.tap, c.create_tap, c.bridge) {
            (None, None, None) if !c.tap_fd.is_empty() => {
                if c.queues != 1 && c.queues != c.tap_fd.len() {
                    return Err(Error::QueuesAndFds(c.queues, c.tap_fd.len()));
                }
                TapSource::Fds(c.tap_fd)
            }
            _ if !c.tap_fd.is_empty() => return Err(Error::TapSource),
            (Some(_), Some(_), _) | (None, None, _) => return Err(Error::TapSource),
            (Some(_), None, Some(_)) => return Err(Error::BridgeWithoutCreate),
            (Some(name), None, None) => TapSource::Existing(name),
            (None, Some(name), bridge) => TapSource::Create { name, bridge },
        };
        Ok(Config {
            tap,
            mac: c.mac.map_or_else(random_mac, |m| m.0),
            mtu: c.mtu,
            queues: c.queues,
            queue_size: c.queue_size,
            daemon: c.daemon,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("give exactly one of --tap NAME (an existing tap), --create-tap NAME and --tap-fd FD (or \"tap\" / \"create_tap\" / \"tap_fd\" in the config file)")]
    TapSource,
    #[error("--queues {0} but {1} --tap-fd descriptors: one descriptor per queue pair")]
    QueuesAndFds(usize, usize),
    #[error("--tap-fd {fd}: {why}")]
    TapFd { fd: RawFd, why: String },
    #[error(
        "--bridge goes with --create-tap: an existing tap (--tap) is not put on a bridge by us"
    )]
    BridgeWithoutCreate,
    #[error("--queues (queue pairs) must be between 1 and 16, not {0}")]
    Queues(usize),
    #[error("--queue-size must be a power of two between 64 and 32768, not {0}")]
    QueueSize(usize),
    #[error("--mtu must be between 68 and 65535, not {0}")]
    Mtu(u16),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// A fresh vhost-user face for each connection over the one tap.
pub(crate) struct NetFactory {
    tap: Arc<Tap>,
    config: NetConfig,
    queue_size: usize,
    stats: Arc<NetStats>,
}

impl NetFactory {
    /// The factory over `tap` (one queue pair per tap queue), its config space saying `mac`
    /// and `mtu`, with rings of up to `queue_size` entries.
    pub(crate) fn new(tap: Tap, mac: [u8; 6], mtu: u16, queue_size: usize) -> NetFactory {
        let config = NetConfig {
            mac,
            status: VIRTIO_NET_S_LINK_UP,
            max_virtqueue_pairs: tap.queue_count() as u16,
            mtu,
        };
        NetFactory {
            stats: Arc::new(NetStats::new(tap.queue_count())),
            tap: Arc::new(tap),
            config,
            queue_size,
        }
    }
}

impl BackendFactory for NetFactory {
    type Backend = Arc<VhostUserNet>;

    fn create(&mut self) -> std::io::Result<Self::Backend> {
        Ok(Arc::new(VhostUserNet::new(
            self.tap.clone(),
            self.config.clone(),
            self.queue_size,
            self.stats.clone(),
        )))
    }

    fn attach(
        &mut self,
        backend: &Self::Backend,
        workers: &[Arc<VringEpollHandler<Self::Backend>>],
    ) -> std::io::Result<()> {
        backend.attach_taps(workers)
    }

    fn log_stats(&self) -> Box<dyn Fn() + Send> {
        let stats = self.stats.clone();
        Box::new(move || {
            for line in stats.lines() {
                tracing::warn!("stats: {line}");
            }
        })
    }

    fn stats_text(&self) -> backends::stats_socket::StatsText {
        let stats = self.stats.clone();
        Box::new(move || stats.lines().join("\n"))
    }

    fn on_terminate(&self) -> Box<dyn Fn() + Send> {
        let stats = self.stats.clone();
        Box::new(move || {
            for line in stats.lines() {
                tracing::info!("stats at exit: {line}");
            }
        })
    }
}

/// Take ownership of the descriptors `--tap-fd` names: each open, above stdio, given once;
/// none leaks into a process we might start.
fn inherited(fds: &[RawFd]) -> Result<Vec<OwnedFd>, Error> {
    let bad = |fd: RawFd, why: &str| Error::TapFd {
        fd,
        why: why.to_string(),
    };
    let mut owned = Vec::with_capacity(fds.len());
    for (i, &fd) in fds.iter().enumerate() {
        if fd < 3 {
            return Err(bad(
                fd,
                "not a descriptor a tap can be on (0, 1 and 2 are stdio)",
            ));
        }
        if fds[..i].contains(&fd) {
            return Err(bad(fd, "given twice"));
        }
        // SAFETY: F_SETFD takes an integer; a closed `fd` only makes it fail with EBADF.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(bad(
                fd,
                "not open (the starting process must leave it open)",
            ));
        }
        // SAFETY: `fd` is open, was inherited for us to serve and is taken once (checked
        // above); nothing else in this process owns it.
        owned.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(owned)
}

/// Open (or create) the tap and serve it until a signal ends the process.
pub fn start_backend(config: Config) -> Result<(), Error> {
    if !(1..=16).contains(&config.queues) {
        return Err(Error::Queues(config.queues));
    }
    if !(64..=32768).contains(&config.queue_size) || !config.queue_size.is_power_of_two() {
        return Err(Error::QueueSize(config.queue_size));
    }
    if config.mtu < 68 {
        return Err(Error::Mtu(config.mtu));
    }
    let tap = match &config.tap {
        TapSource::Fds(fds) => Tap::from_fds(inherited(fds)?)?,
        TapSource::Existing(name) => Tap::open(name, config.queues, false)?,
        TapSource::Create { name, bridge } => {
            let tap = Tap::open(name, config.queues, true)?;
            if let Some(br) = bridge {
                tap.add_to_bridge(br)?;
            }
            tap
        }
    };
    tap.set_mtu(config.mtu)?;
    tap.bring_up()?;
    tracing::info!(
        "serving tap {} ({} queue pair(s), MAC {}, MTU {})",
        tap.name(),
        tap.queue_count(),
        format_mac(&config.mac),
        config.mtu
    );
    let factory = NetFactory::new(tap, config.mac, config.mtu, config.queue_size);
    serve::serve("splitvisor-net", &config.daemon, factory)?;
    Ok(())
}
