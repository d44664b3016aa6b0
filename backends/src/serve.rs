//! The serve loop every backend runs: listen, signal readiness, then serve one frontend
//! connection after another. A frontend that disconnects (a vmm that exits or crashes, a guest
//! that reboots under QEMU) gets a fresh device when it, or the next one, connects again; the
//! backend's own state that must survive (the open image, the counters) lives in the factory.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::guest_memory::GuestMemoryMmap;
use crate::guest_memory::Vring;
use tracing::{info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringEpollHandler};
use vm_memory::GuestMemoryAtomic;

use crate::frontend_channel::FrontendChannel;
use crate::readiness::{self, ReadinessError};
use crate::relay;
use crate::signals::{self, SignalActions};
use crate::socket::{SocketArgs, SocketError, SocketSource};

/// The options every backend daemon takes besides its device options (defined with the
/// backends' configurations in the `api` crate).
pub use api::backend::DaemonConfig;

/// Makes a fresh device for each frontend connection.
pub trait BackendFactory: Send + 'static {
    type Backend: VhostUserBackend<Bitmap = crate::guest_memory::BitmapMmapRegion, Vring = Vring>
        + Clone
        + 'static;

    /// The device for the next connection.
    fn create(&mut self) -> io::Result<Self::Backend>;

    /// Called once the daemon exists, before it accepts: register extra event sources (for
    /// example I/O completion eventfds) with the vring worker threads.
    fn attach(
        &mut self,
        _backend: &Self::Backend,
        _workers: &[Arc<VringEpollHandler<Self::Backend>>],
    ) -> io::Result<()> {
        Ok(())
    }

    /// The new connection's channel to its frontend (for config-change messages); it carries
    /// a socket once the frontend sends SET_BACKEND_REQ_FD.
    fn connected(&mut self, _backend: &Self::Backend, _channel: FrontendChannel) {}

    /// For a device that tracks inflight requests (INFLIGHT_SHMFD): the slot the relay puts
    /// the frontend's region in for `backend`.
    fn inflight(&self, _backend: &Self::Backend) -> Option<crate::inflight::InflightSlot> {
        None
    }

    /// For a device whose state is in its config space (the balloon's target): what takes the
    /// space a frontend restores on a new connection (SET_CONFIG flagged LIVE_MIGRATION, e.g.
    /// the space the process this one replaced served), which the handler cannot tell from a
    /// driver's write.
    fn config_restore(&self, _backend: &Self::Backend) -> Option<relay::ConfigRestore> {
        None
    }

    /// SIGUSR1: log the counters.
    fn log_stats(&self) -> Box<dyn Fn() + Send> {
        Box::new(|| {})
    }

    /// The counters as `key=value` words (lines allowed), for `--stats-socket`.
    fn stats_text(&self) -> crate::stats_socket::StatsText {
        Box::new(String::new)
    }

    /// SIGUSR2: look at the backing resource again (e.g. the image's size).
    fn on_reload(&self) -> Box<dyn Fn() + Send> {
        Box::new(|| {})
    }

    /// Start the backend's own threads (a control socket's, a poller's). Called once the
    /// process is confined (user, file rules), before READY=1: the threads inherit that.
    fn start_threads(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Files the backend removes at exit besides its sockets and pidfile (their directories
    /// keep that right under the file rules).
    fn removed_at_exit(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Directories where the backend makes and writes image files after confinement (a disk's
    /// `--overlay-dir`).
    fn image_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Last words before the process exits on SIGTERM (flush what must be on disk).
    fn on_terminate(&self) -> Box<dyn Fn() + Send> {
        Box::new(|| {})
    }
}

/// Why a backend daemon stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Readiness(#[from] ReadinessError),
    #[error("cannot set up the relay to the frontend")]
    Relay(#[source] io::Error),
    #[error("cannot start the signal thread")]
    Signals(#[source] io::Error),
    #[error("cannot serve the stats socket {path}")]
    StatsSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Privileges(#[from] confine::privileges::PrivilegeError),
    #[error("cannot restrict file access (--landlock off leaves it to the user and the unit)")]
    FileAccess(#[source] Box<confine::file_access::FileAccessError>),
    #[error("cannot start the backend's threads")]
    Threads(#[source] io::Error),
    #[error("cannot create the device for a new connection")]
    CreateDevice(#[source] io::Error),
    /// (vhost-user-backend's error implements Display only, so its text is carried here)
    #[error("the vhost-user daemon failed: {0}")]
    Daemon(String),
}

/// Serve frontends on the socket `args` selects until a signal ends the process (or, with
/// `--once`, until the first frontend disconnects).
///
/// The order is the confinement's: every socket bound and the pidfile written while the
/// process may still reach them; then, single-threaded, the user switch and the file rules
/// (Landlock confines the calling thread and what it starts after); then the threads; and
/// READY=1 last, so that whoever waits for it finds the process as it will stay.
pub fn serve<F: BackendFactory>(
    name: &str,
    args: &DaemonConfig,
    mut factory: F,
) -> Result<(), ServeError> {
    let (mut listener, source) = SocketArgs::from(args).listen()?;
    let stats_err = |source| ServeError::StatsSocket {
        path: args.stats_socket.clone().unwrap_or_default(),
        source,
    };
    let stats = match &args.stats_socket {
        Some(path) => Some(crate::stats_socket::bind(path).map_err(stats_err)?),
        None => None,
    };
    let ready = readiness::prepare(args.pidfile.as_deref())?;
    let mut leaves: Vec<PathBuf> = factory.removed_at_exit();
    if let SocketSource::Path(p) = &source {
        leaves.push(p.clone());
    }
    leaves.extend(args.pidfile.iter().cloned());
    leaves.extend(args.stats_socket.iter().cloned());
    let leaves: Vec<&std::path::Path> = leaves.iter().map(PathBuf::as_path).collect();
    let file_err = |e: confine::file_access::FileAccessError| ServeError::FileAccess(e.into());
    let rules =
        crate::confinement::prepare_files(name, args.landlock, &leaves, &factory.image_dirs())
            .map_err(file_err)?;
    if let Some(user) = &args.user {
        crate::confinement::drop_privileges(name, user)?;
    }
    crate::confinement::restrict_files(name, rules).map_err(file_err)?;
    crate::confinement::selftest_open(name);
    if let Some(stats) = stats {
        crate::stats_socket::serve(stats, factory.stats_text()).map_err(stats_err)?;
    }
    install_signal_actions(args, &source, &factory)?;
    factory.start_threads().map_err(ServeError::Threads)?;
    ready.send()?;
    info!("{name}: listening on {source}");
    let result = serve_connections(name, args.once, &mut listener, &mut factory);
    if let Some(p) = &args.pidfile {
        readiness::remove_pidfile(p);
    }
    result
}

fn serve_connections<F: BackendFactory>(
    name: &str,
    once: bool,
    listener: &mut Listener,
    factory: &mut F,
) -> Result<(), ServeError> {
    loop {
        let backend = factory.create().map_err(ServeError::CreateDevice)?;
        let mut daemon = VhostUserDaemon::new(
            name.to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
        factory
            .attach(&backend, &daemon.get_epoll_handlers())
            .map_err(ServeError::CreateDevice)?;
        let frontend = accept(listener)?;
        // a worker that fails an event ends this connection (crate::worker::recover)
        crate::worker::set_connection(frontend.try_clone().ok());
        let channel = FrontendChannel::default();
        factory.connected(&backend, channel.clone());
        let hooks = relay::Hooks {
            channel,
            inflight: factory.inflight(&backend),
            config_restore: factory.config_restore(&backend),
        };
        start_behind_relay(&mut daemon, frontend, hooks)?;
        info!("{name}: frontend connected");
        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("{name}: frontend disconnected"),
            Err(e) => warn!("{name}: connection ended with an error: {e}"),
        }
        crate::worker::set_connection(None);
        // dropping the daemon stops and joins its vring worker threads
        drop(daemon);
        // and closes what vhost-user-backend left open of them
        crate::worker::close_exit_events();
        if once {
            return Ok(());
        }
    }
}

fn accept(listener: &mut Listener) -> Result<UnixStream, ServeError> {
    loop {
        match listener.accept() {
            Ok(Some(stream)) => return Ok(stream),
            Ok(None) => continue,
            Err(e) => return Err(ServeError::Daemon(format!("cannot accept a frontend: {e}"))),
        }
    }
}

/// Hand the daemon its end of a [`relay`] to `frontend`: the daemon accepts on a listener in
/// a fresh directory only we can enter, which is gone again before the frontend's first
/// message is read.
fn start_behind_relay<B>(
    daemon: &mut VhostUserDaemon<B>,
    frontend: UnixStream,
    hooks: relay::Hooks,
) -> Result<(), ServeError>
where
    B: VhostUserBackend<Bitmap = crate::guest_memory::BitmapMmapRegion, Vring = Vring>
        + Clone
        + 'static,
{
    let relay_err = |e: io::Error| ServeError::Relay(e);
    let dir = private_temp_dir("splitvisor-relay").map_err(relay_err)?;
    let path = dir.join("s");
    let result = (|| {
        let mut inner = Listener::new(&path, true)
            .map_err(|e| ServeError::Daemon(format!("cannot listen for the relay: {e}")))?;
        let backend = UnixStream::connect(&path).map_err(relay_err)?;
        daemon
            .start(&mut inner)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        relay::spawn(frontend, backend, hooks).map_err(relay_err)
    })();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    result
}

/// A new directory in the temporary directory that only we can enter, under a name nobody can
/// guess (so another local user can neither take it first nor make us fail by doing so).
fn private_temp_dir(prefix: &str) -> io::Result<std::path::PathBuf> {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut last = io::Error::other("no attempt");
    for _ in 0..16 {
        // RandomState's keys are random per process; the counter makes each name new
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("{prefix}-{:016x}", h.finish()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn install_signal_actions<F: BackendFactory>(
    args: &DaemonConfig,
    source: &SocketSource,
    factory: &F,
) -> Result<(), ServeError> {
    let socket_path = match source {
        SocketSource::Path(p) => Some(p.clone()),
        _ => None,
    };
    let pidfile = args.pidfile.clone();
    let stats_socket = args.stats_socket.clone();
    let last_words = factory.on_terminate();
    signals::spawn_signal_thread(SignalActions {
        on_stats: factory.log_stats(),
        on_reload: factory.on_reload(),
        on_terminate: Box::new(move || {
            last_words();
            if let Some(p) = &socket_path {
                let _ = std::fs::remove_file(p);
            }
            if let Some(p) = &pidfile {
                readiness::remove_pidfile(p);
            }
            if let Some(p) = &stats_socket {
                let _ = std::fs::remove_file(p);
            }
        }),
    })
    .map_err(ServeError::Signals)
}
