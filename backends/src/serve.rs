//! The serve loop every backend runs: listen, signal readiness, then serve one frontend
//! connection after another. A frontend that disconnects (a vmm that exits or crashes, a guest
//! that reboots under QEMU) gets a fresh device when it, or the next one, connects again; the
//! backend's own state that must survive (the open image, the counters) lives in the factory.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringEpollHandler, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::readiness::{self, ReadinessError};
use crate::signals::{self, SignalActions};
use crate::socket::{SocketArgs, SocketError, SocketSource};

/// The options every backend daemon accepts besides its device options.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Write our PID here once the socket accepts connections (removed at exit).
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// Exit after the first frontend disconnects instead of waiting for the next one.
    #[arg(long)]
    pub once: bool,
}

/// Makes a fresh device for each frontend connection.
pub trait BackendFactory: Send + 'static {
    type Backend: VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Clone + 'static;

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

    /// SIGUSR1: log the counters.
    fn log_stats(&self) -> Box<dyn Fn() + Send> {
        Box::new(|| {})
    }

    /// SIGUSR2: look at the backing resource again (e.g. the image's size).
    fn on_reload(&self) -> Box<dyn Fn() + Send> {
        Box::new(|| {})
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
    #[error("cannot start the signal thread")]
    Signals(#[source] io::Error),
    #[error("cannot create the device for a new connection")]
    CreateDevice(#[source] io::Error),
    /// (vhost-user-backend's error implements Display only, so its text is carried here)
    #[error("the vhost-user daemon failed: {0}")]
    Daemon(String),
}

/// Serve frontends on the socket `args` selects until a signal ends the process (or, with
/// `--once`, until the first frontend disconnects).
pub fn serve<F: BackendFactory>(
    name: &str,
    args: &DaemonArgs,
    mut factory: F,
) -> Result<(), ServeError> {
    let (mut listener, source) = args.socket.listen()?;
    install_signal_actions(args, &source, &factory)?;
    readiness::notify_ready(args.pidfile.as_deref())?;
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
        daemon
            .start(listener)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        info!("{name}: frontend connected");
        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("{name}: frontend disconnected"),
            Err(e) => warn!("{name}: connection ended with an error: {e}"),
        }
        // dropping the daemon stops and joins its vring worker threads
        drop(daemon);
        if once {
            return Ok(());
        }
    }
}

fn install_signal_actions<F: BackendFactory>(
    args: &DaemonArgs,
    source: &SocketSource,
    factory: &F,
) -> Result<(), ServeError> {
    let socket_path = match source {
        SocketSource::Path(p) => Some(p.clone()),
        _ => None,
    };
    let pidfile = args.pidfile.clone();
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
        }),
    })
    .map_err(ServeError::Signals)
}
