//! `splitvisor-balloon`: the daemon (command line → [`Config`] → [`start_backend`]), or with
//! `ctl`, a client of a running daemon's control socket.

use std::path::PathBuf;
use std::process::ExitCode;

use api::backend::balloon::BalloonBackendConfig;
use balloon_backend::{control, start_backend, Config};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{json, Value};

/// vhost-user balloon backend that returns the guest's free memory to the host.
#[derive(Debug, Parser)]
#[command(
    name = "splitvisor-balloon",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    ctl: Option<Ctl>,
    /// Read the configuration from this JSON file (the options below, by their names; an
    /// option also given here overrides the file's).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: BalloonBackendConfig,
}

#[derive(Debug, Subcommand)]
enum Ctl {
    /// Talk to a running balloon's control socket.
    Ctl {
        /// The control socket.
        #[arg(long, value_name = "PATH")]
        control: PathBuf,
        /// Print the daemon's JSON reply instead of lines for people.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        op: Op,
    },
}

#[derive(Debug, Subcommand)]
enum Op {
    /// Shrink or grow the guest to SIZE (e.g. 256M, 1G).
    SetTarget { size: String },
    /// Target, balloon size and counters.
    Info,
    /// The guest's memory statistics (waits at most --timeout-ms for the guest).
    Stats {
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn mib(v: &Value) -> String {
    v.as_u64()
        .map_or("?".into(), |b| format!("{} MiB", b >> 20))
}

fn ctl(control: PathBuf, json_out: bool, op: Op) -> ExitCode {
    let req = match &op {
        Op::SetTarget { size } => match parse_size(size) {
            Some(bytes) => json!({"op": "set-target", "bytes": bytes}),
            None => {
                eprintln!("splitvisor-balloon: invalid size {size:?} (e.g. 256M or 1G)");
                return ExitCode::from(2);
            }
        },
        Op::Info => json!({"op": "info"}),
        Op::Stats { timeout_ms } => json!({"op": "stats", "timeout_ms": timeout_ms}),
    };
    let stats_ms = req["timeout_ms"].as_u64().unwrap_or(0);
    let reply = match control::request(&control, &req, control::reply_timeout(stats_ms)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("splitvisor-balloon: {e}");
            return ExitCode::FAILURE;
        }
    };
    if reply["ok"] != true {
        eprintln!(
            "splitvisor-balloon: {}",
            reply["error"].as_str().unwrap_or("failed")
        );
        return ExitCode::FAILURE;
    }
    if json_out {
        println!("{reply}");
        return ExitCode::SUCCESS;
    }
    match op {
        Op::SetTarget { .. } => println!("target: {}", mib(&reply["target_bytes"])),
        Op::Info => {
            println!("guest memory: {}", mib(&reply["ram_bytes"]));
            println!("target:       {}", mib(&reply["target_bytes"]));
            println!("in balloon:   {}", mib(&reply["balloon_bytes"]));
            if let Some(c) = reply["counters"].as_object() {
                for (k, v) in c {
                    println!("{k}: {v}");
                }
            }
        }
        Op::Stats { .. } => {
            if let Some(s) = reply["stats"].as_object() {
                for (k, v) in s {
                    println!("{k}: {v}");
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(Ctl::Ctl { control, json, op }) = args.ctl {
        return ctl(control, json, op);
    }
    backends::run_with_options(
        "splitvisor-balloon",
        args.config.as_deref(),
        args.options,
        &matches,
        |o| &o.daemon,
        |o| start_backend(Config::from(o)),
    )
}
