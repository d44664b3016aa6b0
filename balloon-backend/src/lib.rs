//! `splitvisor-balloon`: virtio-balloon as a vhost-user process that really returns memory to
//! the host.
//!
//! Layout: `main.rs` parses the command line (the daemon, or `ctl` as a client of its control
//! socket); [`start_backend`] starts the control socket and the shared serve loop;
//! `vhu_balloon.rs` is the vhost-user device, `pages.rs` frees guest memory on the host,
//! `state.rs` holds what outlives a connection, `control.rs` is the control socket.

pub mod control;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod pages;
mod saved_state;
pub mod state;
pub mod vhu_balloon;
pub mod virtio_balloon;

#[cfg(test)]
mod pages_tests;
#[cfg(test)]
mod restore_tests;
#[cfg(test)]
mod vhu_balloon_tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backends::frontend_channel::FrontendChannel;
use backends::relay::ConfigRestore;
use backends::serve::{self, BackendFactory, DaemonConfig, ServeError};

use crate::state::BalloonState;
use crate::vhu_balloon::VhostUserBalloon;

#[derive(Debug, Clone)]
pub struct Config {
    pub control: Option<PathBuf>,
    pub deflate_on_oom: bool,
    pub free_page_reporting: bool,
    /// Ask the guest for statistics this often (and log them); 0: only when asked.
    pub stats_interval: u64,
    pub daemon: DaemonConfig,
}

impl From<api::backend::balloon::BalloonBackendConfig> for Config {
    fn from(c: api::backend::balloon::BalloonBackendConfig) -> Config {
        Config {
            control: c.control,
            deflate_on_oom: c.deflate_on_oom,
            free_page_reporting: c.free_page_reporting,
            stats_interval: c.stats_interval,
            daemon: c.daemon,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot serve the control socket {path}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// A fresh vhost-user face for each connection over the one balloon state.
pub(crate) struct BalloonFactory {
    pub(crate) state: Arc<BalloonState>,
    pub(crate) config: Config,
    /// The control socket, bound before confinement and served from `start_threads`.
    pub(crate) control: Option<std::os::unix::net::UnixListener>,
}

impl BackendFactory for BalloonFactory {
    type Backend = Arc<VhostUserBalloon>;

    fn create(&mut self) -> std::io::Result<Self::Backend> {
        let device = Arc::new(VhostUserBalloon::new(
            self.state.clone(),
            self.config.deflate_on_oom,
            self.config.free_page_reporting,
        ));
        if let Ok(mut d) = self.state.device.lock() {
            *d = Arc::downgrade(&device);
        }
        Ok(device)
    }

    fn connected(&mut self, _backend: &Self::Backend, channel: FrontendChannel) {
        if let Ok(mut c) = self.state.channel.lock() {
            *c = channel;
        }
    }

    fn config_restore(&self, _backend: &Self::Backend) -> Option<ConfigRestore> {
        let state = self.state.clone();
        Some(Arc::new(move |offset, bytes: &[u8]| {
            state
                .restore_config(offset, bytes)
                .map(drop)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        }))
    }

    fn start_threads(&mut self) -> std::io::Result<()> {
        if let Some(listener) = self.control.take() {
            control::serve_listener(listener, self.state.clone())?;
        }
        if self.config.stats_interval > 0 {
            let state = self.state.clone();
            let every = Duration::from_secs(self.config.stats_interval);
            std::thread::Builder::new()
                .name("stats".into())
                .spawn(move || loop {
                    std::thread::sleep(every);
                    match state.request_stats(Duration::from_secs(2)) {
                        Ok((values, _)) => tracing::info!(?values, "guest statistics"),
                        Err(e) => tracing::debug!("no guest statistics: {e}"),
                    }
                })?;
        }
        Ok(())
    }

    fn removed_at_exit(&self) -> Vec<std::path::PathBuf> {
        self.config.control.iter().cloned().collect()
    }

    fn on_terminate(&self) -> Box<dyn Fn() + Send> {
        let control = self.config.control.clone();
        Box::new(move || {
            if let Some(path) = &control {
                let _ = std::fs::remove_file(path);
            }
        })
    }

    fn log_stats(&self) -> Box<dyn Fn() + Send> {
        let state = self.state.clone();
        Box::new(move || {
            let info = control::handle(&serde_json::json!({"op": "info"}), &state);
            tracing::warn!("stats: {info}");
        })
    }
}

/// Serve the balloon until a signal ends the process.
pub fn start_backend(config: Config) -> Result<(), Error> {
    let state = Arc::new(BalloonState::default());
    let control = match &config.control {
        Some(path) => Some(control::bind(path).map_err(|source| Error::Control {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    tracing::info!(
        deflate_on_oom = config.deflate_on_oom,
        free_page_reporting = config.free_page_reporting,
        "balloon ready; target = all of the guest's memory until set"
    );
    let factory = BalloonFactory {
        state: state.clone(),
        config: config.clone(),
        control,
    };
    let result = serve::serve("splitvisor-balloon", &config.daemon, factory);
    if let Some(path) = &config.control {
        let _ = std::fs::remove_file(path);
    }
    Ok(result?)
}
