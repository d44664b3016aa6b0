//! The record of a running domain's processes, `<runtime>/NAME/backends.json` (named before
//! the vmm had an entry in it): the supervisor, the vmm and each backend with its PID and start
//! time, and for each backend how to start it again and how often it was. The supervisor
//! rewrites it (atomically) at every change. `svctl` reads it to answer list, dominfo,
//! console, shutdown and destroy when no supervisor lives, and a new supervisor adopts the
//! processes it names (`svctl start` on a domain whose vmm runs without a supervisor).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::process::ProcessId;

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a record of a domain's processes")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The domain's processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// By name in the runtime dir: blk0, net0, balloon.
    pub backends: BTreeMap<String, BackendRecord>,
    /// Once it is started.
    #[serde(default)]
    pub vmm: Option<ProcessId>,
    /// The supervisor that wrote the record.
    #[serde(default)]
    pub supervisor: Option<ProcessId>,
}

/// One backend process. `down` and `pid` come first: scripts read `"blk0":{"down":…,"pid":N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// Left down: it died too often in a short time.
    pub down: bool,
    pub pid: u32,
    /// Restarts after the backend died.
    pub restarts: u64,
    /// Restarts asked for (`svctl backend-restart`).
    #[serde(default)]
    pub planned_restarts: u64,
    pub start_time: u64,
    /// The program's path and its arguments: how to start it again.
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl BackendRecord {
    pub fn id(&self) -> ProcessId {
        ProcessId {
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

impl Record {
    /// The record at `path`; None if there is none (the domain never ran, or ended cleanly).
    pub fn read(path: &Path) -> Result<Option<Record>, RecordError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RecordError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| RecordError::Parse {
                path: path.into(),
                source,
            })
    }

    /// Write it to `path` in one step (a reader sees the old record or the new one), as one
    /// line.
    pub fn write(&self, path: &Path) -> Result<(), RecordError> {
        let err = |source| RecordError::Write {
            path: path.into(),
            source,
        };
        let text = serde_json::to_string(self).map_err(|e| err(e.into()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text + "\n").map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// The vmm, if it still runs (checked by its start time).
    pub fn live_vmm(&self) -> Option<ProcessId> {
        self.vmm.filter(ProcessId::is_alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("svctl-record-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn sample() -> Record {
        let blk = BackendRecord {
            down: false,
            pid: 4242,
            restarts: 1,
            planned_restarts: 2,
            start_time: 99,
            program: "/usr/bin/splitvisor-blk".into(),
            args: vec!["--config".into(), "/run/splitvisor/vm1/blk0.json".into()],
        };
        Record {
            backends: [("blk0".to_string(), blk)].into(),
            vmm: Some(ProcessId {
                pid: 4300,
                start_time: 120,
            }),
            supervisor: Some(ProcessId {
                pid: 4200,
                start_time: 90,
            }),
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_scripts_find_a_backends_pid() {
        let d = dir();
        let path = d.join("backends.json");
        let rec = sample();
        rec.write(&path).expect("written");
        assert_eq!(Record::read(&path).expect("read"), Some(rec));
        let text = std::fs::read_to_string(&path).expect("text");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r#""blk0":{"down":false,"pid":4242,"#),
            "{text}"
        );
        assert!(!d.join("backends.json.tmp").exists());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn no_record_is_none_and_a_bad_one_an_error_naming_the_file() {
        let d = dir();
        let path = d.join("backends.json");
        assert_eq!(Record::read(&path).expect("no file"), None);
        std::fs::write(&path, r#"{"blk0": {"pid": 1}}"#).expect("write");
        let err = Record::read(&path).expect_err("not a record");
        assert!(
            err.to_string()
                .ends_with("backends.json is not a record of a domain's processes"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn only_a_vmm_with_the_recorded_start_time_is_live() {
        let me = ProcessId::of(std::process::id()).expect("our own stat");
        let mut rec = sample();
        rec.vmm = Some(me);
        assert_eq!(rec.live_vmm(), Some(me));
        rec.vmm = Some(ProcessId {
            start_time: me.start_time + 1,
            ..me
        });
        assert_eq!(rec.live_vmm(), None);
        rec.vmm = None;
        assert_eq!(rec.live_vmm(), None);
    }
}
