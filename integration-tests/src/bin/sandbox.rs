//! `sv-sandbox [OPTIONS] COMMAND...`: run COMMAND inside the nested-KVM sandbox (an L1 Linux
//! with a real /dev/kvm), with our binaries on PATH and the guest kit at `$KIT` (/kit).
//! Several words are run as that argv, each passed unchanged (`sv-sandbox sh -c 'a && b'`); a
//! single word is a shell command line (`sv-sandbox 'a && b'`), as `ssh` takes it. The console
//! streams to stderr; the exit status is COMMAND's. Usually started as `scripts/sandbox.sh`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use integration_tests::{Mode, Sandbox};

#[derive(Parser)]
#[command(
    name = "sv-sandbox",
    about = "Run a command inside the nested-KVM sandbox"
)]
struct Args {
    /// Give up (and kill L1) after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// L1 memory in MiB.
    #[arg(long, default_value_t = 3072)]
    memory: u32,
    /// L1 vCPUs (default 1, or SPLITVISOR_SANDBOX_CPUS; see docs/testing.md).
    #[arg(long)]
    cpus: Option<u32>,
    /// Copy this host program (and its libraries) into L1; repeatable.
    #[arg(long = "host-tool", value_name = "NAME")]
    host_tools: Vec<String>,
    /// Share this host directory read-only at the same path in L1; repeatable.
    #[arg(long = "host-dir", value_name = "PATH")]
    host_dirs: Vec<std::path::PathBuf>,
    /// Run on the host instead (only sensible when its /dev/kvm is hardware-backed).
    #[arg(long)]
    direct: bool,
    /// Keep the job directory (target/sandbox-jobs/...) afterwards.
    #[arg(long)]
    keep: bool,
    /// The command to run in L1: several words are an argv passed unchanged, one word is a
    /// shell command line.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let mode = if args.direct {
        Mode::Direct
    } else {
        Mode::Sandbox
    };
    let mut sandbox = Sandbox::new()?
        .mode(mode)
        .timeout(Duration::from_secs(args.timeout))
        .memory_mib(args.memory)
        .keep_job_dir(args.keep);
    if let Some(cpus) = args.cpus {
        sandbox = sandbox.cpus(cpus);
    }
    for tool in &args.host_tools {
        sandbox = sandbox.host_tool(tool);
    }
    for dir in &args.host_dirs {
        sandbox = sandbox.host_dir(dir);
    }
    let out = sandbox.run(&integration_tests::shell_words::script(&args.command))?;
    Ok(ExitCode::from(u8::try_from(out.status).unwrap_or(1)))
}
