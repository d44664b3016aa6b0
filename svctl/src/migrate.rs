//! `svctl migrate NAME URI` (virsh migrate), `svctl migrate-receive NAME --listen URI` on the
//! destination host, and `svctl domjobinfo NAME` (virsh domjobinfo).
//!
//! The source's vmm sends the VM (`vm.send-migration`) with the domain's definition as its
//! `metadata`; the destination's supervisor (`supervise/incoming.rs`) reads it there, starts
//! the backends and takes the VM. Disks are not copied: both hosts see the same images
//! (shared storage, as with virsh migrate without --copy-storage-all).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use api::types::{MigrationInfo, MigrationReport, VmInfo, VmState};
use serde_json::json;

use crate::lifecycle;
use crate::store::Store;
use crate::supervise::incoming::{IncomingRequest, Travelling};
use crate::Out;

/// How long a migration may take before svctl gives up waiting for its answer.
const MIGRATE_LIMIT: Duration = Duration::from_secs(3600);
/// How often the progress is looked at.
const POLL: Duration = Duration::from_millis(250);

/// `svctl migrate`'s options.
pub struct MigrateOptions {
    pub uri: String,
    /// Keep the guest running while its memory is copied; else paused first (virsh's
    /// default), resumed at the destination.
    pub live: bool,
    /// Same host: guest RAM's file handed over (`unix:` URIs).
    pub local: bool,
    pub downtime_ms: Option<u64>,
    /// Remove the definition here once the domain runs there.
    pub undefine_source: bool,
}

pub fn migrate(store: &Store, name: &str, o: &MigrateOptions, out: &Out) -> Result<(), String> {
    lifecycle::require_running(store, name)?;
    let d = store.load(name)?;
    let persistent = store.persistent(name);
    let api = lifecycle::api(store, name);
    let was_paused = api
        .get::<VmInfo>("vm.info")
        .is_ok_and(|i| i.state == VmState::Paused);
    let paused_here = !o.live && !was_paused && api.put("vm.pause", None).is_ok();
    let travelling = Travelling {
        domain: d,
        persistent,
        resume: paused_here,
    };
    let mut body = json!({
        "destination_url": o.uri,
        "local": o.local,
        "metadata": {"svctl": travelling},
    });
    if let Some(ms) = o.downtime_ms {
        body["downtime_ms"] = json!(ms);
    }
    let sending = {
        let api = lifecycle::api(store, name).with_timeout(MIGRATE_LIMIT);
        std::thread::spawn(move || api.put("vm.send-migration", Some(&body)))
    };
    let mut shown = Shown::new(!out.json);
    while !sending.is_finished() {
        if let Ok(info) = api.get::<MigrationInfo>("vm.migration-info") {
            shown.show(&info);
        }
        std::thread::sleep(POLL);
    }
    shown.done();
    let answer = sending
        .join()
        .map_err(|_| "the migration thread panicked".to_string())?;
    let report: MigrationReport = match answer {
        Ok(v) => serde_json::from_value(v).map_err(|e| format!("vm.send-migration: {e}"))?,
        Err(e) => {
            if paused_here {
                let _ = api.put("vm.resume", None);
            }
            // past the commit the VM stays paused here (the vmm's error says so)
            let here = if e.to_string().contains("stays paused") {
                ""
            } else {
                " (it still runs here)"
            };
            return Err(format!(
                "domain '{name}': the migration to {} failed{here}: {e}",
                o.uri
            ));
        }
    };
    // the vmm here ends (status 6); its supervisor stops the backends it had let go of
    if !lifecycle::wait_down(store, name, Duration::from_secs(30))? {
        tracing::warn!("domain '{name}' migrated, but its processes here did not end yet");
    }
    if o.undefine_source && persistent {
        store.remove(name)?;
    }
    out.print(
        format!(
            "Domain '{name}' migrated to {} ({}, {} in {} round(s)): total {:.1} s, downtime \
             {} ms\n",
            o.uri,
            report.mode,
            mib(report.ram_bytes),
            report.rounds,
            report.total_ms as f64 / 1000.0,
            report.downtime_ms
        ),
        json!({"name": name, "ok": true, "uri": o.uri, "report": report}),
    );
    Ok(())
}

/// The progress on the terminal: one line rewritten in place, or (not a terminal) a line
/// each time the phase or round changes. Dirty rate: the last round's pages over the time
/// between the two rounds.
struct Shown {
    on: bool,
    tty: bool,
    last: (String, u32),
    round_at: Option<(u32, Instant)>,
    rate: Option<f64>,
}

impl Shown {
    fn new(on: bool) -> Shown {
        Shown {
            on,
            tty: std::io::stderr().is_terminal(),
            last: (String::new(), 0),
            round_at: None,
            rate: None,
        }
    }

    fn show(&mut self, i: &MigrationInfo) {
        if !self.on || !i.running {
            return;
        }
        let now = Instant::now();
        match self.round_at {
            Some((r, at)) if r != i.rounds => {
                let secs = now.duration_since(at).as_secs_f64().max(0.001);
                self.rate = Some((i.dirty_pages * 4096) as f64 / secs);
                self.round_at = Some((i.rounds, now));
            }
            None => self.round_at = Some((i.rounds, now)),
            _ => {}
        }
        let rate = self
            .rate
            .map_or(String::new(), |r| format!(", dirty {}/s", mib(r as u64)));
        let line = format!(
            "Migration: {:<9} {} sent, round {}{rate}, expected downtime {} ms, {:.1} s",
            i.phase,
            mib(i.ram_bytes),
            i.rounds,
            i.expected_downtime_ms,
            i.elapsed_ms as f64 / 1000.0
        );
        let key = (i.phase.clone(), i.rounds);
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
            let _ = err.flush();
        } else if key != self.last {
            let _ = writeln!(err, "{line}");
        }
        self.last = key;
    }

    fn done(&self) {
        if self.on && self.tty {
            eprintln!();
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// `svctl migrate-receive NAME --listen URI`: a supervisor for NAME that waits for the
/// migration on URI; returns once it listens (with `wait`: once the domain runs here).
pub fn receive(
    store: &Store,
    name: &str,
    uri: &str,
    timeout: Duration,
    wait: bool,
    out: &Out,
) -> Result<(), String> {
    crate::domain::check_name(name).map_err(|e| e.to_string())?;
    if store.supervisor(name).is_some() || store.vmm(name).is_some() {
        return Err(format!("domain '{name}' already runs here"));
    }
    if !uri_is_valid(uri) {
        return Err(format!(
            "a migration URI is tcp:ADDR:PORT or unix:/PATH, not {uri:?}"
        ));
    }
    let rt = store.runtime(name);
    let _ = std::fs::remove_dir_all(&rt.dir);
    crate::store::private_dir(&rt.dir)?;
    let req = IncomingRequest {
        url: uri.to_string(),
        timeout_s: timeout.as_secs(),
    };
    let text = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    std::fs::write(rt.incoming(), text).map_err(|e| e.to_string())?;
    let mut child = lifecycle::spawn_supervisor(store, name)?;
    let api = lifecycle::api(store, name);
    let start = Instant::now();
    // listening once the vmm has bound the address
    loop {
        if let Ok(i) = api.get::<MigrationInfo>("vm.migration-info") {
            if i.phase == "failed" {
                return Err(format!(
                    "domain '{name}': cannot receive on {uri}: {}",
                    i.error.unwrap_or_default()
                ));
            }
            if i.direction == "incoming" && i.phase != "starting" {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(lifecycle::failed(store, name, status));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "domain '{name}': the receiving vmm did not come up within 60 s (see {})",
                rt.log().display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !wait {
        out.print(
            format!("Domain '{name}' waits for a migration on {uri}\n"),
            json!({"name": name, "ok": true, "listen": uri, "state": "listening"}),
        );
        return Ok(());
    }
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(lifecycle::failed(store, name, status));
        }
        // the VM runs once the domain is recorded with its backends and vm.info answers
        if api.get::<VmInfo>("vm.info").is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    out.print(
        format!("Domain '{name}' migrated in from {uri}: it runs here\n"),
        json!({"name": name, "ok": true, "listen": uri, "state": "running"}),
    );
    Ok(())
}

/// `tcp:HOST:PORT` (a port number) or `unix:/ABSOLUTE/PATH`, as the vmm takes them.
fn uri_is_valid(uri: &str) -> bool {
    if let Some(path) = uri.strip_prefix("unix:") {
        return path.trim_start_matches("//").starts_with('/');
    }
    uri.strip_prefix("tcp:")
        .map(|a| a.trim_start_matches("//"))
        .and_then(|a| a.rsplit_once(':'))
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// `svctl domjobinfo NAME`: the running (or last) migration, as virsh shows a job.
pub fn domjobinfo(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    crate::domain::check_name(name).map_err(|e| e.to_string())?;
    if store.vmm(name).is_none() {
        return Err(format!("domain '{name}' is not running"));
    }
    let i: MigrationInfo = lifecycle::api(store, name)
        .get("vm.migration-info")
        .map_err(|e| format!("domain '{name}': {e}"))?;
    out.print(job_text(&i), json!(i));
    Ok(())
}

fn job_text(i: &MigrationInfo) -> String {
    let job = match (i.running, i.phase.as_str()) {
        (true, _) => "Unbounded",
        (false, "completed") => "Completed",
        (false, "failed") => "Failed",
        (false, "cancelled") => "Cancelled",
        _ => "None",
    };
    let mut t = format!("{:<20}{job}\n", "Job type:");
    if job == "None" {
        return t;
    }
    let op = match i.direction.as_str() {
        "incoming" => "Incoming migration",
        _ => "Outgoing migration",
    };
    let rows = [
        ("Operation:", op.to_string()),
        ("Phase:", i.phase.clone()),
        ("Time elapsed:", format!("{} ms", i.elapsed_ms)),
        ("Memory processed:", mib(i.ram_bytes)),
        ("Iteration:", i.rounds.to_string()),
        ("Dirty pages:", format!("{} (last round)", i.dirty_pages)),
        (
            "Expected downtime:",
            format!("{} ms", i.expected_downtime_ms),
        ),
    ];
    for (k, v) in rows {
        t += &format!("{k:<20}{v}\n");
    }
    if let Some(e) = &i.error {
        t += &format!("{:<20}{e}\n", "Error:");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uris_the_vmm_takes_are_taken() {
        for good in ["tcp:10.0.0.2:7100", "tcp:[::1]:7100", "unix:/run/m.sock"] {
            assert!(uri_is_valid(good), "{good}");
        }
        for bad in [
            "tcp:host",
            "tcp::7100",
            "tcp:h:99999",
            "unix:rel.sock",
            "file:///x",
        ] {
            assert!(!uri_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn a_job_reads_like_virsh_domjobinfo() {
        let none = job_text(&MigrationInfo::default());
        assert_eq!(none, "Job type:           None\n");
        let running = job_text(&MigrationInfo {
            running: true,
            direction: "outgoing".into(),
            phase: "dirty".into(),
            ram_bytes: 3 << 20,
            rounds: 2,
            dirty_pages: 17,
            expected_downtime_ms: 40,
            elapsed_ms: 1200,
            ..Default::default()
        });
        assert!(
            running.contains("Job type:           Unbounded\n"),
            "{running}"
        );
        assert!(running.contains("Operation:          Outgoing migration\n"));
        assert!(running.contains("Memory processed:   3.0 MiB\n"));
        assert!(running.contains("Iteration:          2\n"));
        let failed = job_text(&MigrationInfo {
            direction: "incoming".into(),
            phase: "failed".into(),
            error: Some("the source went away".into()),
            ..Default::default()
        });
        assert!(failed.contains("Job type:           Failed\n"), "{failed}");
        assert!(failed.contains("Incoming migration"));
        assert!(failed.contains("Error:              the source went away\n"));
    }
}
