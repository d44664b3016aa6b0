//! `svctl snapshot-create-as / snapshot-list / snapshot-revert / snapshot-delete` (virsh's
//! snapshot verbs). A snapshot is the disks' state as qcow2 internal snapshots (made by each
//! disk's splitvisor-blk through its control socket while the domain runs, or on the image
//! itself while it is shut off) plus, for a running domain, its memory and device state (the
//! vmm's `vm.snapshot`) in the store: `<store>/snapshots/<domain>/<snapshot>/` holds
//! `snapshot.json` (what `snapshot-list` shows), `domain.json` and the vmm's files.
//!
//! Reverting stops the domain, applies the disks' snapshots on the images, and starts the
//! domain again from the saved state when the snapshot has one (shut off otherwise, as
//! virsh does). An internal snapshot that only a disk knows (made by `qemu-img snapshot -c`)
//! is listed too and can be reverted to: disks only.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::backend::blk::control_request;
use blk_backend::disk::{self, Format, OpenOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::domain::{check_name, Domain};
use crate::store::{DomState, Store};
use crate::{lifecycle, Out};

/// How long the vmm may take to write the memory (guest RAM at disk speed).
const STATE_LIMIT: Duration = Duration::from_secs(600);
/// How long a disk's backend may take to make or drop an internal snapshot.
const DISK_LIMIT: Duration = Duration::from_secs(120);

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_secs())
}

/// What the store keeps about a snapshot (`snapshot.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) name: String,
    /// Seconds since the epoch.
    pub(crate) created: u64,
    /// The domain's state when it was made: running, paused or shut off.
    pub(crate) state: String,
    /// Whether memory and device state were saved (a running or paused domain).
    pub(crate) memory: bool,
    /// An external snapshot (`--disk-only`): each disk went on in a new overlay, and these
    /// images, as they were then, are the snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) external: Vec<PathBuf>,
}

/// A row of `snapshot-list`.
struct Listed {
    name: String,
    created: u64,
    state: String,
    memory: bool,
}

pub(crate) fn snap_dir(store: &Store, name: &str, snap: &str) -> Result<PathBuf, String> {
    check_name(snap).map_err(|_| {
        format!(
            "invalid snapshot name {snap:?}: use letters, digits, '-', '_' and '.' (up to 64, \
             not starting with '.')"
        )
    })?;
    Ok(store.snapshots(name).join(snap))
}

pub(crate) fn read_meta(dir: &Path) -> Option<Meta> {
    let text = std::fs::read_to_string(dir.join("snapshot.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// A disk as the snapshot verbs use it: its index, image and backing directories.
type DiskRef = (usize, PathBuf, Vec<PathBuf>);

/// The domain's qcow2 disks; a raw disk is refused with `why`.
fn qcow2_disks(d: &Domain, why: &str) -> Result<Vec<DiskRef>, String> {
    let mut out = Vec::new();
    for (i, disk) in d.disks.iter().enumerate() {
        let is_qcow2 = match disk.format.as_str() {
            "qcow2" => true,
            "raw" => false,
            _ => crate::domain::detect_format(&disk.path) == Some("qcow2"),
        };
        if !is_qcow2 {
            return Err(format!(
                "disk {} ({}) is raw: {why} needs qcow2 disks (convert it with `qemu-img \
                 convert -O qcow2`)",
                crate::info::disk_target(i),
                disk.path.display()
            ));
        }
        if disk.readonly {
            continue; // nothing of it changes
        }
        out.push((i, disk.path.clone(), disk.backing_dirs.clone()));
    }
    Ok(out)
}

fn open_image(
    path: &Path,
    backing_dirs: &[PathBuf],
    readonly: bool,
) -> Result<disk::qcow2::Qcow2Disk, String> {
    let opts = OpenOptions {
        readonly,
        direct: false,
        format: Format::Qcow2,
        backing_dirs: backing_dirs.to_vec(),
    };
    disk::open_qcow2(path, &opts).map_err(|e| api::error_chain(&e))
}

/// One request to disk `i`'s backend; its error, or the reply.
pub(crate) fn ask_disk(store: &Store, name: &str, i: usize, req: Value) -> Result<Value, String> {
    let path = store.runtime(name).disk_control(i);
    let reply = control_request(&path, &req, DISK_LIMIT)?;
    match reply.get("ok") {
        Some(Value::Bool(true)) => Ok(reply),
        _ => Err(format!(
            "disk {}: {}",
            crate::info::disk_target(i),
            reply["error"].as_str().unwrap_or("failed")
        )),
    }
}

/// Make (`create`) or drop an internal snapshot on each disk: through its backend while the
/// domain runs, on the image otherwise.
fn on_disks(
    store: &Store,
    name: &str,
    disks: &[DiskRef],
    running: bool,
    snap: &str,
    create: bool,
) -> Result<(), String> {
    let op = if create {
        "snapshot-create"
    } else {
        "snapshot-delete"
    };
    for (done, (i, path, dirs)) in disks.iter().enumerate() {
        let result = if running {
            ask_disk(store, name, *i, json!({"op": op, "name": snap})).map(drop)
        } else {
            open_image(path, dirs, false).and_then(|q| {
                let r = if create {
                    q.create_snapshot(snap).map(drop)
                } else {
                    q.delete_snapshot(snap)
                };
                let closed = disk::Disk::close(&q);
                r.map_err(|e| api::error_chain(&e))?;
                closed.map_err(|e| format!("{}: {e}", path.display()))
            })
        };
        if let Err(e) = result {
            if create {
                // the disks done so far drop it again: all or nothing
                let _ = on_disks(store, name, &disks[..done], running, snap, false);
            }
            return Err(e);
        }
    }
    Ok(())
}

pub fn create(
    store: &Store,
    name: &str,
    snap: &str,
    disk_only: bool,
    out: &Out,
) -> Result<(), String> {
    let d = store.load(name)?;
    let dir = snap_dir(store, name, snap)?;
    if dir.exists() {
        return Err(format!("domain '{name}' already has a snapshot '{snap}'"));
    }
    if disk_only {
        return crate::external_snapshot::create(store, d, snap, &dir, out);
    }
    let disks = qcow2_disks(&d, "an internal snapshot")?;
    let state = lifecycle::state(store, name);
    let running = state != DomState::ShutOff;
    let tmp = dir.with_file_name(format!(".{snap}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let made = (|| {
        if !running {
            return on_disks(store, name, &disks, false, snap, true);
        }
        // paused while the memory and every disk are taken, so that they match
        let api = lifecycle::api(store, name).with_timeout(STATE_LIMIT);
        let paused_here = api.put("vm.pause", None).is_ok();
        let url = format!("file://{}", tmp.display());
        let result = api
            .put("vm.snapshot", Some(&json!({ "destination_url": url })))
            .map_err(|e| format!("domain '{name}': cannot save its state: {e}"))
            .and_then(|_| on_disks(store, name, &disks, true, snap, true));
        if paused_here {
            api.put("vm.resume", None)
                .map_err(|e| format!("domain '{name}' stays paused: {e}"))?;
        }
        result
    })();
    let meta = Meta {
        name: snap.to_string(),
        created: now(),
        state: state.to_string(),
        memory: running,
        external: Vec::new(),
    };
    let finish = made.and_then(|()| {
        let write = |file: &str, text: String| {
            std::fs::write(tmp.join(file), text).map_err(|e| format!("{file}: {e}"))
        };
        write(
            "domain.json",
            serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?,
        )?;
        write(
            "snapshot.json",
            serde_json::to_string_pretty(&meta).map_err(|e| e.to_string())?,
        )?;
        std::fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))
    });
    if let Err(e) = finish {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    out.print(
        format!("Domain snapshot {snap} created\n"),
        json!({"name": name, "snapshot": snap, "ok": true, "memory": running}),
    );
    Ok(())
}

/// The internal snapshots of disk `i` (through its backend while the domain runs).
fn disk_snapshots(
    store: &Store,
    name: &str,
    i: usize,
    path: &Path,
    backing_dirs: &[PathBuf],
    running: bool,
) -> Result<Vec<(String, u64)>, String> {
    if running {
        let reply = ask_disk(store, name, i, json!({"op": "snapshot-list"}))?;
        let list = reply["snapshots"].as_array().cloned().unwrap_or_default();
        return Ok(list
            .iter()
            .map(|s| {
                let n = s["name"].as_str().unwrap_or_default().to_string();
                (n, s["date_sec"].as_u64().unwrap_or(0))
            })
            .collect());
    }
    let q = open_image(path, backing_dirs, true)?;
    let list = q.snapshots().map_err(|e| api::error_chain(&e))?;
    Ok(list.into_iter().map(|s| (s.name, s.date_sec)).collect())
}

fn listed(store: &Store, name: &str, d: &Domain) -> Result<Vec<Listed>, String> {
    let mut rows = Vec::new();
    if let Ok(entries) = std::fs::read_dir(store.snapshots(name)) {
        for e in entries.flatten() {
            if let Some(m) = read_meta(&e.path()) {
                rows.push(Listed {
                    name: m.name,
                    created: m.created,
                    state: m.state,
                    memory: m.memory,
                });
            }
        }
    }
    // what only the disks know (qemu-img snapshot -c): disk-only snapshots
    let running = lifecycle::state(store, name) != DomState::ShutOff;
    if let Ok(disks) = qcow2_disks(d, "") {
        for (i, path, dirs) in disks {
            for (snap, date) in disk_snapshots(store, name, i, &path, &dirs, running)? {
                if !rows.iter().any(|r| r.name == snap) {
                    rows.push(Listed {
                        name: snap,
                        created: date,
                        state: "disk-snapshot".into(),
                        memory: false,
                    });
                }
            }
        }
    }
    rows.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(rows)
}

fn when(secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " +0000")
}

pub fn list(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    let rows = listed(store, name, &d)?;
    let mut text = format!(
        " {:<20} {:<26} {:<14} {}\n{}\n",
        "Name",
        "Creation Time",
        "State",
        "Memory",
        "-".repeat(70)
    );
    for r in &rows {
        let memory = if r.memory { "yes" } else { "no" };
        text += &format!(
            " {:<20} {:<26} {:<14} {memory}\n",
            r.name,
            when(r.created),
            r.state
        );
    }
    let json_rows: Vec<Value> = rows
        .iter()
        .map(
            |r| json!({"name": r.name, "created": r.created, "state": r.state, "memory": r.memory}),
        )
        .collect();
    out.print(text, json!({"name": name, "snapshots": json_rows}));
    Ok(())
}

pub fn revert(store: &Store, name: &str, snap: &str, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    let dir = snap_dir(store, name, snap)?;
    let meta = read_meta(&dir);
    if let Some(m) = meta.as_ref().filter(|m| !m.external.is_empty()) {
        let images: Vec<String> = m.external.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "snapshot '{snap}' is external (--disk-only): reverting to it is not supported; \
             the disks as they were then are {}",
            images.join(", ")
        ));
    }
    let disks = qcow2_disks(&d, "reverting to a snapshot")?;
    let running = lifecycle::state(store, name) != DomState::ShutOff;
    // every disk must have it before any is changed
    for (i, path, dirs) in &disks {
        let known = disk_snapshots(store, name, *i, path, dirs, running)?;
        if !known.iter().any(|(n, _)| n == snap) {
            return Err(match &meta {
                Some(_) => format!(
                    "disk {} ({}) no longer has the snapshot '{snap}'",
                    crate::info::disk_target(*i),
                    path.display()
                ),
                None => format!("domain '{name}' has no snapshot '{snap}'"),
            });
        }
    }
    let with_memory = meta.as_ref().is_some_and(|m| m.memory);
    if with_memory {
        let def = dir.join("domain.json");
        crate::save::same_definition(&d, &crate::domain::read(&def)?, &def)?;
    }
    if running {
        lifecycle::destroy(store, name)?;
    }
    for (_, path, dirs) in &disks {
        let mut q = open_image(path, dirs, false)?;
        let applied = q.apply_snapshot(snap).map_err(|e| api::error_chain(&e));
        let closed = disk::Disk::close(&q).map_err(|e| format!("{}: {e}", path.display()));
        applied.and(closed)?;
    }

    if with_memory {
        lifecycle::start_from(store, name, None, Some(&dir))?;
    }
    let now = if with_memory { "running" } else { "shut off" };
    out.print(
        format!("Domain '{name}' reverted to snapshot {snap} ({now})\n"),
        json!({"name": name, "snapshot": snap, "ok": true, "memory": with_memory}),
    );
    Ok(())
}

pub fn delete(store: &Store, name: &str, snap: &str, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    let dir = snap_dir(store, name, snap)?;
    if read_meta(&dir).is_some_and(|m| !m.external.is_empty()) {
        // the disks run on in their overlays, over the images the snapshot names
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        out.print(
            format!("Domain snapshot {snap} deleted (its images stay: the disks' overlays read through them)\n"),
            json!({"name": name, "snapshot": snap, "ok": true}),
        );
        return Ok(());
    }
    let disks = qcow2_disks(&d, "a snapshot")?;
    let running = lifecycle::state(store, name) != DomState::ShutOff;
    let mut found = dir.exists();
    for (i, path, dirs) in &disks {
        let known = disk_snapshots(store, name, *i, path, dirs, running)?;
        if known.iter().any(|(n, _)| n == snap) {
            found = true;
            let one = [(*i, path.clone(), dirs.clone())];
            on_disks(store, name, &one, running, snap, false)?;
        }
    }
    if !found {
        return Err(format!("domain '{name}' has no snapshot '{snap}'"));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    out.print(
        format!("Domain snapshot {snap} deleted\n"),
        json!({"name": name, "snapshot": snap, "ok": true}),
    );
    Ok(())
}
