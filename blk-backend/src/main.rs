//! `splitvisor-blk`: command line (or `--config FILE`) → [`BlkBackendConfig`] → [`Config`] →
//! [`start_backend`].

use std::path::PathBuf;
use std::process::ExitCode;

use api::backend::blk::BlkBackendConfig;
use blk_backend::{start_backend, Config};
use clap::{CommandFactory, FromArgMatches, Parser};

/// vhost-user-blk backend serving a raw or qcow2 disk image.
#[derive(Debug, Parser)]
#[command(name = "splitvisor-blk", version)]
struct Args {
    /// Read the configuration from this JSON file (the options below, by their names; an
    /// option also given here overrides the file's).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: BlkBackendConfig,
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    backends::run_with_options(
        "splitvisor-blk",
        args.config.as_deref(),
        args.options,
        &matches,
        |o| &o.daemon,
        |o| start_backend(Config::try_from(o)?),
    )
}
