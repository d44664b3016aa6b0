//! `sv-bootbench`: boot time and peak RSS of VMMs, side by side.
//!
//! Each `--case NAME=COMMAND` is a shell command that boots a guest whose console (stdout)
//! prints `--marker` once booted. Runs are interleaved (A, B, A, B, ...) so that both cases
//! see the same machine conditions. Per run it measures the time from spawn to the marker and
//! the process's peak RSS (VmHWM, sampled until it exits). Prints one line per run and a
//! summary of medians; `--json` prints the summary as JSON.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sv-bootbench",
    about = "Boot time and peak RSS of VMMs, interleaved runs"
)]
struct Args {
    /// NAME=COMMAND (run with `sh -c 'exec COMMAND'`); repeat for each VMM.
    #[arg(long = "case", required = true)]
    cases: Vec<String>,
    /// Runs per case.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Console text that marks a booted guest.
    #[arg(long, default_value = "SPLITVISOR-GUEST-READY")]
    marker: String,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Guest RAM in MiB: mappings at least this large count as guest memory, and the RSS
    /// without them is reported as the VMM's own overhead.
    #[arg(long, default_value_t = 512)]
    guest_mem_mib: u64,
    /// A/B: print case A's medians over case B's (repeatable) [default: the cases in pairs].
    #[arg(long = "ratio", value_name = "A/B")]
    ratios: Vec<String>,
    #[arg(long)]
    json: bool,
}

struct Run {
    boot: Duration,
    peak_rss_kib: u64,
    peak_overhead_kib: u64,
}

/// RSS of the process outside its guest-RAM mappings (those of at least `guest_kib`), in KiB.
fn overhead_kib(pid: u32, guest_kib: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest, mut size) = (0, 0, 0);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Size:") => size = words.next()?.parse().ok()?,
            Some("Rss:") => {
                let rss: u64 = words.next()?.parse().ok()?;
                total += rss;
                if size >= guest_kib {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    Some(total - guest)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn run_once(command: &str, marker: &str, timeout: Duration, guest_kib: u64) -> Result<Run> {
    let start = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the case's command")?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("no stdout")?;
    // read the console on a thread; the main thread samples RSS until the process exits
    let marker = marker.to_string();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut booted = None;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if booted.is_none() && String::from_utf8_lossy(&seen).contains(&marker) {
                booted = Some(start.elapsed());
            }
        }
        booted
    });
    let mut peak = 0;
    let mut peak_overhead = 0;
    loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(kib) = overhead_kib(pid, guest_kib) {
            peak_overhead = peak_overhead.max(kib);
        }
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            // bounded: a process stuck in the kernel survives SIGKILL
            for _ in 0..100 {
                if child.try_wait()?.is_some() {
                    bail!("run timed out after {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            bail!("run timed out after {timeout:?}, and pid {pid} survived SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let boot = reader
        .join()
        .ok()
        .flatten()
        .context("the guest never printed the marker")?;
    Ok(Run {
        boot,
        peak_rss_kib: peak,
        peak_overhead_kib: peak_overhead,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cases: Vec<(String, String)> = args
        .cases
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(n, cmd)| (n.to_string(), cmd.to_string()))
                .context("--case must be NAME=COMMAND")
        })
        .collect::<Result<_>>()?;
    // the ratios asked for, or the cases in pairs (ours, theirs)
    let index = |name: &str| cases.iter().position(|(n, _)| n == name);
    let pairs: Vec<(usize, usize)> = if args.ratios.is_empty() {
        (0..cases.len() / 2).map(|i| (2 * i, 2 * i + 1)).collect()
    } else {
        args.ratios
            .iter()
            .map(|r| {
                r.split_once('/')
                    .and_then(|(a, b)| Some((index(a)?, index(b)?)))
                    .with_context(|| format!("--ratio {r}: expected A/B, two case names"))
            })
            .collect::<Result<_>>()?
    };
    let mut results: Vec<Vec<Run>> = cases.iter().map(|_| Vec::new()).collect();
    let mut failures = vec![0usize; cases.len()];
    for i in 0..args.runs {
        for (c, (name, cmd)) in cases.iter().enumerate() {
            let timeout = Duration::from_secs(args.timeout);
            match run_once(cmd, &args.marker, timeout, args.guest_mem_mib << 10) {
                Ok(run) => {
                    println!(
                        "run {:>2} {name:<20} boot {:>8.1} ms  peak RSS {:>7} KiB  VMM overhead {:>6} KiB",
                        i + 1,
                        run.boot.as_secs_f64() * 1000.0,
                        run.peak_rss_kib,
                        run.peak_overhead_kib
                    );
                    results[c].push(run);
                }
                Err(e) => {
                    // a failed run is reported and counted, not averaged in
                    println!("run {:>2} {name:<20} FAILED: {e:#}", i + 1);
                    failures[c] += 1;
                }
            }
        }
    }
    if results.iter().any(|r| r.is_empty()) {
        bail!("a case has no successful run: {failures:?} failures");
    }
    for ((name, _), f) in cases.iter().zip(&failures) {
        if *f > 0 {
            println!("{name}: {f} of {} runs failed", args.runs);
        }
    }
    let med = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let boot_ms = |r: &Run| r.boot.as_secs_f64() * 1000.0;
    let summary: Vec<[f64; 3]> = results
        .iter()
        .map(|runs| {
            [
                med(runs, boot_ms),
                med(runs, |r| r.peak_rss_kib as f64),
                med(runs, |r| r.peak_overhead_kib as f64),
            ]
        })
        .collect();
    let range: Vec<(f64, f64)> = results
        .iter()
        .map(|runs| {
            let ms = runs.iter().map(boot_ms);
            (ms.clone().fold(f64::MAX, f64::min), ms.fold(0.0, f64::max))
        })
        .collect();
    if args.json {
        let items: Vec<String> = cases
            .iter()
            .zip(&summary)
            .map(|((n, _), [b, r, o])| {
                format!("{{\"case\":\"{n}\",\"median_boot_ms\":{b:.1},\"median_peak_rss_kib\":{r:.0},\"median_vmm_overhead_kib\":{o:.0}}}")
            })
            .collect();
        println!("[{}]", items.join(","));
        return Ok(());
    }
    println!(
        "\n{:<20} {:>17} {:>19} {:>21} {:>24}",
        "case",
        "median boot (ms)",
        "range (ms)",
        "median peak RSS (KiB)",
        "median VMM overhead (KiB)"
    );
    for (((n, _), [b, r, o]), (lo, hi)) in cases.iter().zip(&summary).zip(&range) {
        let span = format!("{lo:.0}-{hi:.0}");
        println!("{n:<20} {b:>17.1} {span:>19} {r:>21.0} {o:>24.0}");
    }
    for (a, b) in pairs {
        let (x, y) = (summary[a], summary[b]);
        println!(
            "{} / {}: boot time {:.2}, peak RSS {:.2}, VMM overhead {:.2}",
            cases[a].0,
            cases[b].0,
            x[0] / y[0],
            x[1] / y[1],
            x[2] / y[2]
        );
    }
    Ok(())
}
