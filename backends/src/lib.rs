//! What every splitvisor vhost-user backend process shares: logging, the listening socket
//! (path, inherited descriptor or systemd activation), readiness notification, signals and the
//! serve loop that accepts one frontend after another; and what every device does the same
//! way: descriptor chains, guest memory, config-space reads, worker exit events.

pub mod config_space;
pub mod confinement;
pub mod control_socket;
pub mod descriptor_chain;
pub mod device_state;
pub mod frontend_channel;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod guest_iovecs;
pub mod guest_memory;
pub mod inflight;
pub mod logging;
pub mod queue;
pub mod readiness;
pub mod relay;
pub mod saved_chain;
pub mod sched;
pub mod serve;
pub mod signals;
pub mod socket;
pub mod stats_socket;
pub mod worker;

/// The error for a poisoned lock (a thread panicked holding it), for `map_err`.
pub fn lock_err<T>(_: T) -> std::io::Error {
    std::io::Error::other("lock poisoned")
}

pub use api::error_chain;

/// Every backend's `main` after clap: its options (the command line over its `--config FILE`,
/// if any), then [`run_main`] with `run` on them. `daemon` finds the daemon options in `T`.
pub fn run_with_options<T, E>(
    name: &str,
    file: Option<&std::path::Path>,
    cli: T,
    matches: &clap::ArgMatches,
    daemon: fn(&T) -> &api::backend::DaemonConfig,
    run: impl FnOnce(T) -> Result<(), E>,
) -> std::process::ExitCode
where
    T: serde::Serialize + serde::de::DeserializeOwned,
    E: std::error::Error,
{
    api::unix_socket::restrict_umask();
    let options = match load_options(name, file, cli, matches, daemon) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let (policy, seccomp) = (daemon(&options).sched, daemon(&options).seccomp);
    run_main(name, policy, seccomp, || run(options))
}

/// A backend's options: its command line over its `--config FILE` (if any), with a
/// vhost-user socket to serve, checked before anything is opened or created. A problem is one
/// line `NAME: what: why` and exit status 1, as for any other bad input.
fn load_options<T: serde::Serialize + serde::de::DeserializeOwned>(
    name: &str,
    file: Option<&std::path::Path>,
    cli: T,
    matches: &clap::ArgMatches,
    daemon: fn(&T) -> &api::backend::DaemonConfig,
) -> Result<T, std::process::ExitCode> {
    let fail = |e: &dyn std::error::Error| {
        eprintln!("{name}: {}", error_chain(e));
        std::process::ExitCode::FAILURE
    };
    let options = api::backend::load_with_file(file, cli, matches).map_err(|e| fail(&e))?;
    if socket::SocketArgs::from(daemon(&options))
        .source()
        .is_none()
    {
        return Err(fail(&socket::SocketError::NoSocket));
    }
    Ok(options)
}

/// The body of every backend's `main` after argument parsing: logging; before any thread
/// exists, the stop signals blocked (so that only the signal thread takes them) and the
/// scheduling policy set (every thread inherits it), the seccomp filter installed; then `run`.
/// An error is one line `NAME: what: why` and exit status 1.
pub fn run_main<E: std::error::Error>(
    name: &str,
    policy: sched::SchedPolicy,
    seccomp: api::config::SeccompMode,
    run: impl FnOnce() -> Result<(), E>,
) -> std::process::ExitCode {
    logging::init();
    if let Err(e) = signals::block_signals() {
        eprintln!("{name}: cannot block signals: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if let Err(e) = sched::set_policy(policy) {
        eprintln!("{name}: cannot set the scheduling policy {policy:?}: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if let Err(e) = confinement::install(name, seccomp) {
        eprintln!("{name}: {}", error_chain(&e));
        return std::process::ExitCode::FAILURE;
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
