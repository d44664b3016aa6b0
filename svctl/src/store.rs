//! The domain store (one JSON file per domain) and the runtime directories of running domains.
//!
//! Store: `$SVCTL_STORE`, else `/var/lib/splitvisor` for root, else
//! `$XDG_STATE_HOME/splitvisor` (`~/.local/state/splitvisor`). Runtime: `$SVCTL_RUNTIME`, else
//! `/run/splitvisor` for root, else `$XDG_RUNTIME_DIR/splitvisor` (or `/tmp/splitvisor-$UID`).
//! A domain runs while its vmm lives (recorded with its start time in
//! `<runtime>/<name>/backends.json`), or while its supervisor (PID in `supervisor.pid`) starts
//! it.

use std::path::{Path, PathBuf};

use crate::domain::{self, check_name, Domain, Runtime};
use crate::process::ProcessId;
use crate::record::Record;

pub struct Store {
    pub dir: PathBuf,
    pub runtime: PathBuf,
}

/// What `svctl` reports of a domain's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomState {
    ShutOff,
    Running,
    Paused,
}

impl std::fmt::Display for DomState {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            DomState::ShutOff => "shut off",
            DomState::Running => "running",
            DomState::Paused => "paused",
        })
    }
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Create `dir` with mode 0700, or check the one that is there: a directory (not a link) of
/// ours that no other user may write. Another user's directory, or one they may write, could
/// hold their socket where a backend's should be — and the vmm hands each backend the
/// guest's memory.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let shown = dir.display();
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!(
            "{shown} is not a directory (a link or a file): refusing to use it"
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "{shown} is owned by uid {}, not by us (uid {me}): refusing to use it (its owner \
             could put a socket there that receives a guest's memory)",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{shown} may be written by other users (mode {:o}): refusing to use it; \
             `chmod 700 {shown}` if that is not meant",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

impl Store {
    pub fn open() -> Result<Store, String> {
        let dir = env_dir("SVCTL_STORE").unwrap_or_else(|| {
            if root() {
                PathBuf::from("/var/lib/splitvisor")
            } else {
                env_dir("XDG_STATE_HOME")
                    .or_else(|| env_dir("HOME").map(|h| h.join(".local/state")))
                    .unwrap_or_else(|| PathBuf::from("/tmp"))
                    .join("splitvisor")
            }
        });
        let runtime = env_dir("SVCTL_RUNTIME").unwrap_or_else(|| {
            if root() {
                PathBuf::from("/run/splitvisor")
            } else {
                match env_dir("XDG_RUNTIME_DIR") {
                    Some(d) => d.join("splitvisor"),
                    // SAFETY: getuid has no preconditions.
                    None => PathBuf::from(format!("/tmp/splitvisor-{}", unsafe { libc::getuid() })),
                }
            }
        });
        for d in [&dir, &runtime] {
            private_dir(d)?;
        }
        Ok(Store { dir, runtime })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Where domain `name`'s snapshots are kept (one directory each).
    pub fn snapshots(&self, name: &str) -> PathBuf {
        self.dir.join("snapshots").join(name)
    }

    pub fn runtime(&self, name: &str) -> Runtime {
        Runtime {
            dir: self.runtime.join(name),
            overlays: self.dir.join("overlays").join(name),
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// A defined domain, or "domain not found" (the running transient ones included).
    pub fn load(&self, name: &str) -> Result<Domain, String> {
        check_name(name).map_err(|e| e.to_string())?;
        let transient = self.runtime(name).dir.join("domain.json");
        let path = if self.path(name).exists() {
            self.path(name)
        } else if transient.exists() {
            transient
        } else {
            return Err(format!("domain not found: no domain named '{name}'"));
        };
        let d = domain::read(&path)?;
        if d.uuid.is_empty() {
            return Err(format!(
                "domain file {}: uuid: none (define the domain again to get one)",
                path.display()
            ));
        }
        Ok(d)
    }

    /// Refuse `d` if a NIC of it would share its bridge and MAC with another NIC, its own or
    /// another domain's (the ones that cannot be read are left out).
    pub fn check_macs(&self, d: &Domain) -> Result<(), String> {
        let others: Vec<Domain> = self
            .names()
            .iter()
            .filter(|n| **n != d.name)
            .filter_map(|n| self.load(n).ok())
            .collect();
        d.check_mac_clash(&others).map_err(|e| e.to_string())
    }

    pub fn save(&self, d: &Domain) -> Result<(), String> {
        let text = serde_json::to_string_pretty(d).map_err(|e| e.to_string())?;
        let path = self.path(&d.name);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text + "\n")
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    pub fn remove(&self, name: &str) -> Result<(), String> {
        let path = self.path(name);
        std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))
    }

    pub fn persistent(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// Every domain: the defined ones and the running transient ones, sorted by name.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (dir, want_json) in [(&self.dir, true), (&self.runtime, false)] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let name = if want_json {
                    match (p.extension(), p.file_stem()) {
                        (Some(x), Some(stem)) if x == "json" => stem.to_string_lossy().into_owned(),
                        _ => continue,
                    }
                } else if p.join("domain.json").exists() {
                    e.file_name().to_string_lossy().into_owned()
                } else {
                    continue;
                };
                if check_name(&name).is_ok() && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names.sort();
        names
    }

    /// The PID of the domain's live supervisor, if it runs (a process that took over a dead
    /// supervisor's PID is not taken for it: its command line must be `svctl __supervise NAME`).
    pub fn supervisor(&self, name: &str) -> Option<u32> {
        let pid = read_pid(&self.runtime(name).supervisor_pid())?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (alive(pid) && supervises(&cmdline, name)).then_some(pid)
    }

    /// The record of a domain's processes, if it has one (see `record.rs`).
    pub fn record(&self, name: &str) -> Option<Record> {
        Record::read(&self.runtime(name).backends_status()).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            None
        })
    }

    /// The domain's vmm, if it runs (by the record: its PID and start time).
    pub fn vmm(&self, name: &str) -> Option<ProcessId> {
        self.record(name)?.live_vmm()
    }
}

/// Whether a process's command line (`/proc/PID/cmdline`: NUL-separated) is a supervisor's
/// for domain `name`.
fn supervises(cmdline: &[u8], name: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"__supervise" && w[1] == name.as_bytes())
}

pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True if `pid` is a process that is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn runtime_directories_are_private_or_refused() {
        let base = std::env::temp_dir().join(format!("svctl-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let fresh = base.join("a/b");
        private_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        private_dir(&fresh).expect("ours, 0700: used again");

        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&open).unwrap_err();
        assert!(
            err.contains("may be written by other users (mode 777)"),
            "{err}"
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&open).expect("readable by others, writable only by us");

        let link = base.join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let err = private_dir(&link).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = base.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let err = private_dir(&theirs).unwrap_err();
            assert!(
                err.contains("owned by uid 65534, not by us (uid 0)"),
                "{err}"
            );
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_supervisor_is_known_by_its_command_line() {
        let cmd = b"/usr/bin/svctl\0__supervise\0vm1\0";
        assert!(supervises(cmd, "vm1"));
        assert!(!supervises(cmd, "vm"), "another domain's");
        assert!(!supervises(b"/usr/bin/svctl\0start\0vm1\0", "vm1"));
        assert!(!supervises(b"sleep\0vm1\0", "vm1"));
        assert!(!supervises(b"", "vm1"), "a zombie has none");
    }
}
