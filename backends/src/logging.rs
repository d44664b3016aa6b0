//! Logging for backend processes: quiet by default (warnings and errors), `RUST_LOG` raises it.

use tracing_subscriber::EnvFilter;

/// Install the process-wide tracing subscriber writing to stderr. Safe to call more than once.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
