//! `splitvisor-net`: command line (or `--config FILE`) → [`NetBackendConfig`] → [`Config`] →
//! [`start_backend`].

use std::path::PathBuf;
use std::process::ExitCode;

use api::backend::net::NetBackendConfig;
use clap::{CommandFactory, FromArgMatches, Parser};
use net_backend::{start_backend, Config};

/// vhost-user-net backend in front of a tap device.
#[derive(Debug, Parser)]
#[command(name = "splitvisor-net", version)]
struct Args {
    /// Read the configuration from this JSON file (the options below, by their names; an
    /// option also given here overrides the file's).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: NetBackendConfig,
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    backends::run_with_options(
        "splitvisor-net",
        args.config.as_deref(),
        args.options,
        &matches,
        |o| &o.daemon,
        |o| start_backend(Config::try_from(o)?),
    )
}
