//! The source's side of a migration (`vm.send-migration`):
//!
//! 1. connect, greet, send the configuration (with RAM's size and pages);
//! 2. RAM: `local` hands the memfd over later; pre-copy sends all of it while the guest runs
//!    (KVM's dirty log on), then rounds of the pages written meanwhile until the next round
//!    would fit in `downtime_ms` at the rate measured (at most [`MAX_ROUNDS`]); otherwise
//!    (stop-and-copy) all of it once the VM is paused;
//! 3. pause the vCPUs, stop every ring (GET_VRING_BASE), read the state (a snapshot's
//!    sections), send the last dirty pages (or the memfd), then the state;
//! 4. let go of every backend and say so (Released); the destination connects to them,
//!    builds the VM paused and answers Ready; Commit; it runs the VM and answers Running.
//!
//! Pre-copy needs every write to guest RAM logged: the vCPUs' by KVM ([`DirtyLog`]), the
//! backends' by themselves ([`BackendLog`], VHOST_USER_PROTOCOL_F_LOG_SHMFD); a VM with a
//! backend that cannot log is copied while paused.
//! A failure before Released leaves the VM as it was (running or paused, logging off); after
//! it, the backends are taken back first; after Commit, nothing is undone (the destination
//! may run the VM): the VM stays paused here and the error says so.

use std::time::{Duration, Instant};

use api::types::MigrationReport;

use super::backend_log::BackendLog;
use super::dirty::{self, DirtyLog, PAGE};
use super::ram::RamSender;
use super::url::MigrationUrl;
use super::wire::{Conn, Kind};
use super::{MigrationError, StreamConfig};
use crate::snapshot::save::{self, Handles};

/// Dirty rounds after the first pass, at most; then stop-and-copy whatever is left.
pub const MAX_ROUNDS: u32 = 8;
/// How long a peer may be silent (the destination builds the VM and connects to every
/// backend between Released and Ready).
const PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a backend taken back after a failure may take to reconnect.
const RECLAIM_FOR: Duration = Duration::from_secs(10);

pub struct SendRequest {
    pub url: MigrationUrl,
    pub local: bool,
    pub downtime: Duration,
    /// Carried to the destination as it is (`StreamConfig::metadata`).
    pub metadata: Option<serde_json::Value>,
}

/// How far the migration got: what a failure must undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Running,
    Paused,
    Suspended,
    Released,
    Committed,
}

struct Source<'a> {
    h: &'a Handles,
    conn: Conn,
    stage: Stage,
    was_running: bool,
    /// The VM's in-place reboots when the migration began.
    resets: u64,
}

/// Migrate the VM to `req.url`. On success the VM runs at the destination (the caller ends
/// this vmm with [`crate::exit::VmExit::Migrated`]).
pub fn send(h: &Handles, req: &SendRequest) -> Result<MigrationReport, MigrationError> {
    if req.local && !matches!(req.url, MigrationUrl::Unix(_)) {
        return Err(MigrationError::Refused(
            "a local migration goes over unix:PATH (guest RAM's file is handed over)".into(),
        ));
    }
    if !h.progress.begin() {
        return Err(MigrationError::Refused(
            "a migration is already running".into(),
        ));
    }
    let result = send_begun(h, req);
    match &result {
        Ok(_) => h.progress.end("completed"),
        Err(MigrationError::Cancelled | MigrationError::Ram(super::ram::RamError::Cancelled)) => {
            h.progress.end("cancelled")
        }
        Err(e) => h.progress.fail(crate::error_chain(e)),
    }
    result
}

fn send_begun(h: &Handles, req: &SendRequest) -> Result<MigrationReport, MigrationError> {
    let conn = req.url.connect()?;
    conn.set_timeout(Some(PEER_TIMEOUT))
        .map_err(super::wire::WireError::from)?;
    h.control.begin_snapshot()?;
    let mut src = Source {
        h,
        was_running: !h.control.paused(),
        conn,
        stage: Stage::Running,
        resets: h.exit.resets(),
    };
    let result = src.run(req);
    if let Err(e) = &result {
        let _ = src
            .conn
            .send(Kind::Failed, crate::error_chain(e).as_bytes());
        src.conn.shutdown();
        src.undo();
    }
    if src.stage < Stage::Committed {
        h.control.end_snapshot();
    }
    // else: the VM may run at the destination now; pause, resume and snapshots stay refused
    // here for good (this vmm exits after a success)
    result
}

impl Source<'_> {
    fn run(&mut self, req: &SendRequest) -> Result<MigrationReport, MigrationError> {
        let t0 = Instant::now();
        let h = self.h;
        self.conn.send_hello()?;
        let head = StreamConfig {
            config: h.cfg.clone(),
            ram_size: h.ram_size,
            ram_pages: h.ram_pages,
            local: req.local,
            paused: !self.was_running,
            metadata: req.metadata.clone(),
        };
        let head = serde_json::to_vec(&head).map_err(MigrationError::Config)?;
        self.conn.send(Kind::Config, &head)?;
        // the destination has made its RAM (or refused, with its reason) before anything here
        // changes
        self.conn.expect(Kind::Accepted)?;
        let mut ram = RamSender::new(&h.memfd, h.ram_size).with_progress(&h.progress);
        // every backend must log its writes for a pre-copy (see the module doc)
        let precopy = !req.local && self.was_running && BackendLog::possible(&h.vhost);
        let mut rounds = 0;
        let mut pending = Vec::new();
        let log = if precopy {
            let slots = dirty::slots(&h.regions);
            let log =
                DirtyLog::start(h.vm.clone(), slots.clone()).map_err(MigrationError::DirtyLog)?;
            let blog =
                BackendLog::start(h.vhost.clone(), slots).map_err(MigrationError::BackendLog)?;
            let mut log = Logs {
                kvm: log,
                backends: blog,
            };
            let t = Instant::now();
            h.progress.set_phase("ram");
            ram.send_all(&mut self.conn)?;
            h.progress.set_phase("dirty");
            let mut rate = rate_of(ram.bytes, t.elapsed());
            tracing::info!(bytes = ram.bytes, "migration: first pass of guest RAM sent");
            loop {
                if h.progress.cancelled() {
                    return Err(MigrationError::Cancelled);
                }
                pending = log.take()?;
                let expected = duration_for(pending.len() as u64 * PAGE, rate);
                h.progress
                    .round(rounds, pending.len() as u64, expected.as_millis() as u64);
                tracing::info!(
                    round = rounds + 1,
                    dirty_pages = pending.len(),
                    expected_downtime_ms = expected.as_millis() as u64,
                    "migration: dirty pages"
                );
                if expected <= req.downtime || rounds >= MAX_ROUNDS {
                    break;
                }
                let (t, before) = (Instant::now(), ram.bytes);
                ram.send_pages(&mut self.conn, &pending)?;
                rate = rate_of(ram.bytes - before, t.elapsed());
                rounds += 1;
            }
            Some(log)
        } else {
            None
        };

        if h.progress.cancelled() {
            return Err(MigrationError::Cancelled);
        }
        if self.was_running {
            h.control.pause_for_snapshot()?;
        }
        let paused_at = Instant::now();
        h.progress.set_phase("stopped");
        self.stage = Stage::Paused;
        save::suspend_devices(h)?;
        self.stage = Stage::Suspended;
        let state = save::capture(h)?;
        if h.exit.resets() != self.resets || h.exit.requested() {
            return Err(MigrationError::Refused(
                "the guest rebooted (or is stopping) during the migration: the kernel was loaded \
                 into its RAM again, which no dirty log sees; migrate again"
                    .into(),
            ));
        }
        let stopped_at = Instant::now();
        let mode = match log {
            Some(mut log) => {
                pending.extend(log.take()?);
                pending.sort_unstable();
                pending.dedup();
                ram.send_pages(&mut self.conn, &pending)?;
                drop(log);
                "precopy"
            }
            None if req.local => {
                use std::os::fd::AsRawFd;
                self.conn.send_fd(h.memfd.as_raw_fd())?;
                "local"
            }
            None => {
                ram.send_all(&mut self.conn)?;
                "stop-and-copy"
            }
        };
        self.conn.send(Kind::State, &state.to_bytes())?;
        let copied_at = Instant::now();
        if !h.progress.enter_handover() {
            return Err(MigrationError::Cancelled);
        }
        for d in &h.vhost {
            d.lock().unwrap_or_else(|e| e.into_inner()).release();
        }
        self.stage = Stage::Released;
        self.conn.send(Kind::Released, &[])?;
        self.conn.expect(Kind::Ready)?;
        let ready_at = Instant::now();
        self.conn.send(Kind::Commit, &[])?;
        self.stage = Stage::Committed;
        self.conn
            .expect(Kind::Running)
            .map_err(|e| MigrationError::Unconfirmed(crate::error_chain(&e)))?;
        let report = MigrationReport {
            mode: mode.into(),
            ram_bytes: ram.bytes,
            rounds,
            total_ms: t0.elapsed().as_millis() as u64,
            downtime_ms: paused_at.elapsed().as_millis() as u64,
            stop_ms: ms(stopped_at - paused_at),
            copy_ms: ms(copied_at - stopped_at),
            destination_ms: ms(ready_at - copied_at),
            resume_ms: ms(ready_at.elapsed()),
        };
        tracing::info!(?report, "migration done: the VM runs at the destination");
        Ok(report)
    }

    /// After a failure: back to how the VM was, as far as that is safe.
    fn undo(&mut self) {
        let h = self.h;
        if self.stage >= Stage::Committed {
            tracing::error!("migration failed after the commit: the VM stays paused here");
            return;
        }
        if self.stage >= Stage::Released {
            for d in &h.vhost {
                d.lock().unwrap_or_else(|e| e.into_inner()).reclaim();
            }
            let start = Instant::now();
            while !h
                .vhost
                .iter()
                .all(|d| d.lock().unwrap_or_else(|e| e.into_inner()).is_up())
                && start.elapsed() < RECLAIM_FOR
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.stage >= Stage::Suspended {
            save::resume_devices(h, h.transports.len());
        }
        if self.stage >= Stage::Paused && self.was_running {
            if let Err(e) = h.control.resume_after_snapshot() {
                tracing::error!("cannot resume the VM after the failed migration: {e}");
            }
        }
        tracing::warn!("migration failed; the VM carries on here");
    }
}

/// KVM's log and the backends' together.
struct Logs {
    kvm: DirtyLog,
    backends: BackendLog,
}

impl Logs {
    /// The pages written since the last call, in order, each once.
    fn take(&mut self) -> Result<Vec<u64>, MigrationError> {
        let mut pages = self.kvm.take().map_err(MigrationError::DirtyLog)?;
        pages.extend(self.backends.take().map_err(MigrationError::BackendLog)?);
        pages.sort_unstable();
        pages.dedup();
        Ok(pages)
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Bytes per second (at least 1 MB/s: a first pass of almost nothing says little).
fn rate_of(bytes: u64, took: Duration) -> u64 {
    let secs = took.as_secs_f64().max(1e-3);
    ((bytes as f64 / secs) as u64).max(1 << 20)
}

fn duration_for(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_pause_follows_the_measured_rate() {
        let rate = rate_of(100 << 20, Duration::from_secs(1));
        assert_eq!(duration_for(50 << 20, rate), Duration::from_millis(500));
        // a tiny first pass does not make the link look slower than 1 MB/s
        assert_eq!(rate_of(10, Duration::from_secs(1)), 1 << 20);
    }
}
