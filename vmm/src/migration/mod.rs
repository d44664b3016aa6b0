//! Live migration: the VM moved to another vmm (`vm.send-migration` here,
//! `splitvisor --incoming` there), its devices' backends handed over, not copied.
//!
//! - [`wire`]: the stream (frames, a greeting with the version);
//! - [`url`]: `tcp:HOST:PORT` and `unix:PATH`;
//! - [`ram`]: guest RAM over the stream; [`dirty`]: the pages the vCPUs write meanwhile;
//! - [`send`]: the source's order of operations; [`receive`]: the destination's.
//!
//! The state that moves is a snapshot's (`crate::snapshot`: the same sections); RAM goes
//! over the stream, or (local migration) its memfd is handed over by SCM_RIGHTS.
//! docs/migration.md describes the protocol and the failure cases.

pub mod backend_log;
pub mod dirty;
pub mod ram;
pub mod receive;
pub mod send;
pub mod url;
pub mod wire;

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;

/// What the Config frame carries: the VM's configuration and what the destination needs to
/// make its RAM before the first page comes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamConfig {
    pub config: VmConfig,
    pub ram_size: u64,
    pub ram_pages: api::types::RamPages,
    /// Guest RAM's file comes as a MemFd frame instead of Ram frames.
    pub local: bool,
    /// The VM was paused at the source, and stays paused at the destination.
    pub paused: bool,
    /// What the source's `vm.send-migration` gave as `metadata`, for the destination's
    /// manager.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Url(#[from] url::UrlError),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Ram(#[from] ram::RamError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::save::SnapshotError),
    #[error(transparent)]
    Restore(#[from] crate::snapshot::restore::RestoreError),
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Run(#[from] crate::run_control::RunError),
    #[error("KVM's dirty log failed")]
    DirtyLog(#[source] kvm_ioctls::Error),
    #[error("the backends' dirty log failed: {0}")]
    BackendLog(String),
    #[error("the source's configuration cannot be read")]
    Config(#[source] serde_json::Error),
    #[error("{0}")]
    Refused(String),
    #[error("the migration was cancelled (vm.cancel-migration)")]
    Cancelled,
    #[error("the destination did not confirm after the commit ({0}): the VM stays paused here; check the destination before resuming it")]
    Unconfirmed(String),
}

/// A migration's progress, shared with the API (`vm.migration-info`, `vm.cancel-migration`).
#[derive(Debug, Default)]
pub struct Progress {
    running: std::sync::atomic::AtomicBool,
    cancel: std::sync::atomic::AtomicBool,
    phase: std::sync::Mutex<&'static str>,
    ram_bytes: std::sync::atomic::AtomicU64,
    rounds: std::sync::atomic::AtomicU32,
    dirty_pages: std::sync::atomic::AtomicU64,
    expected_downtime_ms: std::sync::atomic::AtomicU64,
    started: std::sync::Mutex<Option<std::time::Instant>>,
    incoming: std::sync::atomic::AtomicBool,
    metadata: std::sync::Mutex<Option<serde_json::Value>>,
    error: std::sync::Mutex<Option<String>>,
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

use std::sync::atomic::Ordering::Relaxed;

impl Progress {
    /// A migration begins (false if one is already running).
    pub fn begin(&self) -> bool {
        if self.running.swap(true, Relaxed) {
            return false;
        }
        self.cancel.store(false, Relaxed);
        self.ram_bytes.store(0, Relaxed);
        self.rounds.store(0, Relaxed);
        self.dirty_pages.store(0, Relaxed);
        self.expected_downtime_ms.store(0, Relaxed);
        *locked(&self.started) = Some(std::time::Instant::now());
        self.incoming.store(false, Relaxed);
        *locked(&self.metadata) = None;
        *locked(&self.error) = None;
        self.set_phase("connecting");
        true
    }

    /// A migration is being received (on a vmm that has no VM yet).
    pub fn begin_incoming(&self) -> bool {
        if !self.begin() {
            return false;
        }
        self.incoming.store(true, Relaxed);
        self.set_phase("starting");
        true
    }

    /// What the source's configuration brought for the destination's manager.
    pub fn set_metadata(&self, metadata: Option<serde_json::Value>) {
        *locked(&self.metadata) = metadata;
    }

    pub fn end(&self, outcome: &'static str) {
        self.set_phase(outcome);
        self.running.store(false, Relaxed);
    }

    /// The migration failed, for this reason.
    pub fn fail(&self, why: String) {
        *locked(&self.error) = Some(why);
        self.end("failed");
    }

    pub fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    pub fn add_ram(&self, bytes: u64) {
        self.ram_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn round(&self, rounds: u32, dirty_pages: u64, expected_ms: u64) {
        self.rounds.store(rounds, Relaxed);
        self.dirty_pages.store(dirty_pages, Relaxed);
        self.expected_downtime_ms.store(expected_ms, Relaxed);
    }

    /// Ask the running migration to stop (false if none runs).
    pub fn request_cancel(&self) -> bool {
        // under the phase's lock: a cancel and the hand-over never cross
        let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if !self.running.load(Relaxed) || *phase == "handover" {
            return false; // nothing to stop, or past the point where it can be undone
        }
        self.cancel.store(true, Relaxed);
        true
    }

    /// Enter the hand-over (from here a cancel is refused); false if a cancel came first.
    pub fn enter_handover(&self) -> bool {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if self.cancel.load(Relaxed) {
            return false;
        }
        *phase = "handover";
        true
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Relaxed)
    }

    /// What `vm.migration-info` shows.
    pub fn info(&self) -> api::types::MigrationInfo {
        let started = *locked(&self.started);
        let direction = match (started.is_some(), self.incoming.load(Relaxed)) {
            (false, _) => "",
            (true, false) => "outgoing",
            (true, true) => "incoming",
        };
        api::types::MigrationInfo {
            running: self.running.load(Relaxed),
            direction: direction.to_string(),
            phase: match *self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
                "" => "none".to_string(),
                p => p.to_string(),
            },
            ram_bytes: self.ram_bytes.load(Relaxed),
            rounds: self.rounds.load(Relaxed),
            dirty_pages: self.dirty_pages.load(Relaxed),
            expected_downtime_ms: self.expected_downtime_ms.load(Relaxed),
            elapsed_ms: started.map_or(0, |t| t.elapsed().as_millis() as u64),
            metadata: locked(&self.metadata).clone(),
            error: locked(&self.error).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_and_the_hand_over_exclude_each_other() {
        let p = Progress::default();
        assert!(!p.request_cancel(), "nothing runs yet");
        assert!(p.begin());
        assert!(!p.begin(), "one at a time");
        assert!(p.enter_handover());
        assert!(!p.request_cancel(), "too late once handed over");
        p.end("completed");
        assert!(p.begin());
        assert!(p.request_cancel());
        assert!(!p.enter_handover(), "cancelled first");
        p.end("cancelled");
        assert_eq!(p.info().phase, "cancelled");
    }
}
