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
    #[error("the destination did not confirm after the commit ({0}): the VM stays paused here; check the destination before resuming it")]
    Unconfirmed(String),
}
