//! What every splitvisor vhost-user backend process shares: logging, the listening socket
//! (path, inherited descriptor or systemd activation), readiness notification, signals and the
//! serve loop that accepts one frontend after another; and what every device does the same
//! way: descriptor chains, guest memory, config-space reads, worker exit events.

pub mod config_space;
pub mod descriptor_chain;
pub mod frontend_channel;
pub mod guest_iovecs;
pub mod guest_memory;
pub mod logging;
pub mod queue;
pub mod readiness;
pub mod relay;
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

/// An error and its causes on one line: "outer: cause: root cause".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// A backend's `--config` file could not be used: one line `NAME: what: why`, exit status 1
/// (as for any other bad input).
pub fn config_error(name: &str, e: &api::backend::ConfigFileError) -> std::process::ExitCode {
    eprintln!("{name}: {}", error_chain(e));
    std::process::ExitCode::FAILURE
}

/// The body of every backend's `main` after argument parsing: logging; before any thread
/// exists, the stop signals blocked (so that only the signal thread takes them) and the
/// scheduling policy set (every thread inherits it); then `run`. An error is one line
/// `NAME: what: why` and exit status 1.
pub fn run_main<E: std::error::Error>(
    name: &str,
    policy: sched::SchedPolicy,
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
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
