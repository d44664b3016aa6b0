//! How a domain's processes end once its vmm has: the backends are stopped (SIGTERM, SIGKILL
//! after [`STOP_LIMIT`]), the logs are kept in `<store>/logs/NAME/`, the runtime dir is
//! removed. The supervisor does it when its vmm ends; `svctl` does it for a domain whose
//! supervisor is gone (`shutdown`, `destroy`, and `start` before it starts afresh).

use std::time::Duration;

use super::lock::SupervisorLock;
use crate::process::{stop_all, Watched};
use crate::record::Record;
use crate::store::Store;

pub const STOP_LIMIT: Duration = Duration::from_secs(3);

/// Stop these backend processes.
pub fn stop_backends(mut procs: Vec<Watched>) {
    let mut refs: Vec<&mut Watched> = procs.iter_mut().collect();
    for pid in stop_all(&mut refs, STOP_LIMIT) {
        tracing::warn!(pid, "backend ignored SIGTERM for {STOP_LIMIT:?}: killed");
    }
}

/// The record's backends that still run (each checked by its start time).
pub fn recorded_backends(rec: &Record) -> Vec<Watched> {
    rec.backends
        .values()
        .filter_map(|b| Watched::adopt(b.id()).ok())
        .collect()
}

/// Keep the logs of the run next to the domain, then remove its runtime dir.
pub fn clean_up(store: &Store, name: &str) {
    let rt = store.runtime(name);
    let logs = store.dir.join("logs").join(name);
    if std::fs::create_dir_all(&logs).is_ok() {
        if let Ok(entries) = std::fs::read_dir(&rt.dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let _ = std::fs::rename(e.path(), logs.join(e.file_name()));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&rt.dir);
}

/// What is left of a domain whose vmm has ended and whose supervisor is gone: its backends are
/// stopped and its runtime dir cleaned up. False (and nothing done) while a supervisor holds
/// the domain or its vmm still runs.
pub fn reap_unsupervised(store: &Store, name: &str) -> Result<bool, String> {
    let rt = store.runtime(name);
    if !rt.dir.is_dir() {
        return Ok(true);
    }
    let Some(_lock) = SupervisorLock::try_acquire(&rt)? else {
        return Ok(false);
    };
    let rec = match Record::read(&rt.backends_status()) {
        Ok(rec) => rec.unwrap_or_default(),
        Err(e) => {
            tracing::warn!("{e}: no backend of it is stopped");
            Record::default()
        }
    };
    if rec.live_vmm().is_some() {
        return Ok(false);
    }
    let procs = recorded_backends(&rec);
    if !procs.is_empty() {
        tracing::info!(
            domain = name,
            n = procs.len(),
            "stopping backends left behind"
        );
    }
    stop_backends(procs);
    clean_up(store, name);
    Ok(true)
}
