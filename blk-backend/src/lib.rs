//! `splitvisor-blk`: a vhost-user-blk device process serving a raw or qcow2 image.
//!
//! Layout (the vhost-device shape): `main.rs` parses the command line into a [`Config`];
//! [`start_backend`] opens the image and runs the shared serve loop from `backends`;
//! `vhu_blk.rs` is the vhost-user face (features, config space, queue loop); `blk.rs` executes
//! requests that `request.rs` parsed and validated; `disk/` holds the image formats.

pub mod blk;
pub mod control;
pub mod disk;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod reopen;
pub mod request;
pub mod resize;
mod saved_state;
pub mod stats;
pub mod uring;
pub mod vhu_blk;
pub mod virtio_blk;

#[cfg(test)]
mod test_util;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use backends::frontend_channel::FrontendChannel;
use backends::serve::{self, BackendFactory, DaemonConfig, ServeError};
use vhost_user_backend::VringEpollHandler;
use vmm_sys_util::epoll::EventSet;

use crate::blk::{BlkDevice, MAX_SEGMENTS};
use crate::disk::{Disk, Format, OpenError, OpenOptions};
use crate::stats::Stats;
use crate::vhu_blk::VhostUserBlk;
use crate::virtio_blk::BlkConfig;

/// Largest transfer of one data descriptor we advertise (SIZE_MAX).
pub const SIZE_MAX: u32 = 1 << 20;

/// What the backend serves and how.
#[derive(Debug, Clone)]
pub struct Config {
    pub image: PathBuf,
    pub format: Format,
    /// Directories backing files may come from; empty: the image's own.
    pub backing_dirs: Vec<PathBuf>,
    pub readonly: bool,
    pub direct: bool,
    pub queues: usize,
    /// Worker threads serving the queues; `None`: one per queue, at most one per CPU.
    pub threads: Option<usize>,
    pub queue_size: usize,
    pub serial: String,
    /// Asynchronous I/O with io_uring (raw images); off or unavailable: synchronous.
    pub uring: bool,
    pub control: Option<PathBuf>,
    pub overlay_dir: Option<PathBuf>,
    pub daemon: DaemonConfig,
}

impl TryFrom<api::backend::blk::BlkBackendConfig> for Config {
    type Error = Error;
    fn try_from(c: api::backend::blk::BlkBackendConfig) -> Result<Config, Error> {
        Ok(Config {
            image: c.image.ok_or(Error::NoImage)?,
            format: c.format,
            backing_dirs: c.backing_dir,
            readonly: c.readonly,
            direct: c.direct,
            queues: c.queues,
            threads: c.threads,
            queue_size: c.queue_size,
            serial: c.serial,
            uring: c.io_engine == api::backend::blk::IoEngine::Uring,
            control: c.control,
            overlay_dir: c.overlay_dir,
            daemon: c.daemon,
        })
    }
}

/// Why the backend could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no disk image given: use --image PATH or \"image\" in the config file")]
    NoImage,
    #[error("--queues must be between 1 and 64, not {0}")]
    Queues(usize),
    #[error("--threads must be between 1 and the number of queues ({queues}), not {threads}")]
    Threads { threads: usize, queues: usize },
    #[error("--queue-size must be a power of two between 2 and 32768, not {0}")]
    QueueSize(usize),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot open the overlay directory {path}")]
    OverlayDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve the control socket {path}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// What the device is made of besides its image: the checked options of [`start_backend`].
pub(crate) struct DeviceOptions {
    pub readonly: bool,
    pub serial: Vec<u8>,
    pub queues: usize,
    pub threads: usize,
    pub queue_size: usize,
    /// Asynchronous I/O with io_uring (the caller made sure the kernel has it).
    pub uring: bool,
    /// The daemon's `--sched` (under `auto` the workers follow their queues' depth).
    pub sched: backends::sched::SchedPolicy,
}

/// Makes a fresh vhost-user face for each connection over the one open device.
pub(crate) struct BlkFactory {
    device: Arc<BlkDevice>,
    /// The current connection's channel to its frontend, for config-change messages.
    channel: Arc<Mutex<FrontendChannel>>,
    config: BlkConfig,
    queues: usize,
    threads: usize,
    queue_size: usize,
    uring: bool,
    sched: backends::sched::SchedPolicy,
    /// The control socket, bound before confinement and served from `start_threads`.
    control: Option<(std::os::unix::net::UnixListener, reopen::Served)>,
    control_path: Option<PathBuf>,
}

impl BlkFactory {
    /// The device over `disk` and its config space, as `options` say.
    pub(crate) fn new(disk: Box<dyn Disk>, options: DeviceOptions) -> BlkFactory {
        let capacity = disk.capacity();
        // a request is at most one header, one status and queue_size - 2 data descriptors
        let seg_max = options.queue_size as u32 - 2;
        let device = Arc::new(BlkDevice {
            disk: blk::DiskSlot::new(disk),
            io_in_flight: Default::default(),
            readonly: options.readonly,
            serial: options.serial,
            max_request_bytes: u64::from(seg_max) * u64::from(SIZE_MAX),
            stats: Arc::new(Stats::default()),
        });
        let config = BlkConfig {
            capacity: capacity >> virtio_blk::SECTOR_SHIFT,
            size_max: SIZE_MAX,
            seg_max,
            blk_size: 512,
            physical_block_exp: 3,
            min_io_size: 1,
            opt_io_size: 0,
            num_queues: options.queues as u16,
            max_discard_sectors: u32::MAX >> 9,
            max_discard_seg: MAX_SEGMENTS,
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: u32::MAX >> 9,
            max_write_zeroes_seg: MAX_SEGMENTS,
            write_zeroes_may_unmap: 1,
        };
        BlkFactory {
            device,
            channel: Arc::new(Mutex::new(FrontendChannel::default())),
            config,
            queues: options.queues,
            threads: options.threads,
            queue_size: options.queue_size,
            uring: options.uring,
            sched: options.sched,
            control: None,
            control_path: None,
        }
    }
}

impl BackendFactory for BlkFactory {
    type Backend = Arc<VhostUserBlk>;

    fn create(&mut self) -> std::io::Result<Self::Backend> {
        let vu = Arc::new(
            VhostUserBlk::new(
                self.device.clone(),
                self.config.clone(),
                self.queues,
                self.threads,
                self.queue_size,
                self.uring,
            )?
            .with_sched(self.sched),
        );
        Ok(vu)
    }

    fn connected(&mut self, _backend: &Self::Backend, channel: FrontendChannel) {
        if let Ok(mut c) = self.channel.lock() {
            *c = channel;
        }
    }

    fn inflight(&self, backend: &Self::Backend) -> Option<backends::inflight::InflightSlot> {
        Some(backend.inflight_slot())
    }

    fn on_reload(&self) -> Box<dyn Fn() + Send> {
        // SIGUSR2: online resize — take the image's new size and tell the guest
        let device = self.device.clone();
        let channel = self.channel.clone();
        Box::new(move || resize::refresh(&device, &channel))
    }

    fn attach(
        &mut self,
        backend: &Self::Backend,
        workers: &[Arc<VringEpollHandler<Self::Backend>>],
    ) -> std::io::Result<()> {
        // each queue's io_uring completions wake the worker thread serving that queue
        for (queue, fd) in backend.completion_fds().into_iter().enumerate() {
            let (Some(fd), Some(worker)) = (fd, workers.get(backend.thread_of(queue))) else {
                continue;
            };
            let event = u64::from(vhu_blk::completion_event(self.queues, queue));
            worker.register_listener(fd, EventSet::IN, event)?;
        }
        Ok(())
    }

    fn log_stats(&self) -> Box<dyn Fn() + Send> {
        let stats = self.device.stats.clone();
        Box::new(move || tracing::warn!("stats: {stats}"))
    }

    fn stats_text(&self) -> backends::stats_socket::StatsText {
        let stats = self.device.stats.clone();
        Box::new(move || stats.to_string())
    }

    fn start_threads(&mut self) -> std::io::Result<()> {
        if let Some((listener, served)) = self.control.take() {
            control::serve_listener(listener, self.device.clone(), self.channel.clone(), served)?;
        }
        Ok(())
    }

    fn removed_at_exit(&self) -> Vec<PathBuf> {
        self.control_path.iter().cloned().collect()
    }

    fn image_dirs(&self) -> Vec<PathBuf> {
        // the overlay directory of the control socket's `reopen` (none without a control socket)
        let served = self
            .control
            .iter()
            .filter_map(|(_, s)| s.overlay_dir.as_ref());
        served.map(|(dir, _)| dir.clone()).collect()
    }

    fn on_terminate(&self) -> Box<dyn Fn() + Send> {
        let device = self.device.clone();
        let control = self.control_path.clone();
        Box::new(move || {
            if let Some(path) = &control {
                let _ = std::fs::remove_file(path);
            }
            if !device.readonly {
                if let Err(e) = device.disk.get().close() {
                    tracing::error!("closing the image failed: {e}");
                }
            }
            tracing::info!("stats at exit: {}", device.stats);
        })
    }
}

/// Open the image and serve it until a signal ends the process.
pub fn start_backend(config: Config) -> Result<(), Error> {
    if !(1..=64).contains(&config.queues) {
        return Err(Error::Queues(config.queues));
    }
    let threads = config
        .threads
        .unwrap_or_else(|| vhu_blk::default_threads(config.queues));
    if !(1..=config.queues).contains(&threads) {
        return Err(Error::Threads {
            threads,
            queues: config.queues,
        });
    }
    if !(2..=32768).contains(&config.queue_size) || !config.queue_size.is_power_of_two() {
        return Err(Error::QueueSize(config.queue_size));
    }
    let opts = OpenOptions {
        readonly: config.readonly,
        direct: config.direct,
        format: config.format,
        backing_dirs: config.backing_dirs.clone(),
    };
    let disk = disk::open(&config.image, &opts)?;
    let capacity = disk.capacity();
    tracing::info!(
        "serving {} ({} bytes{}) with {} queue(s) of {} on {} worker thread(s)",
        config.image.display(),
        capacity,
        if config.readonly { ", read-only" } else { "" },
        config.queues,
        config.queue_size,
        threads
    );
    let uring = config.uring && uring::available();
    if config.uring && !uring {
        tracing::warn!("io_uring is unavailable here: serving requests synchronously");
    }
    let options = DeviceOptions {
        readonly: config.readonly,
        serial: config.serial.as_bytes().to_vec(),
        queues: config.queues,
        threads,
        queue_size: config.queue_size,
        uring,
        sched: config.daemon.sched,
    };
    let mut factory = BlkFactory::new(disk, options);
    if let Some(path) = &config.control {
        let listener = control::bind(path).map_err(|source| Error::Control {
            path: path.clone(),
            source,
        })?;
        let overlay_dir = match &config.overlay_dir {
            Some(dir) => Some((
                dir.clone(),
                std::fs::File::open(dir).map_err(|source| Error::OverlayDir {
                    path: dir.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        let served = reopen::Served {
            image: config.image.clone(),
            opts,
            overlay_dir,
        };
        factory.control = Some((listener, served));
        factory.control_path = Some(path.clone());
    }
    let result = serve::serve("splitvisor-blk", &config.daemon, factory);
    if let Some(path) = &config.control {
        let _ = std::fs::remove_file(path);
    }
    Ok(result?)
}
