//! `svctl snapshot-create-as NAME SNAP --disk-only` (libvirt's external disk snapshots):
//! every writable disk goes on in a new qcow2 overlay in `<store>/overlays/<domain>/`, and the
//! image under it, never written again, is the snapshot. A running domain is paused while
//! each disk's backend switches (the control socket's `reopen`: it makes the overlay itself,
//! in the one directory it may write); a shut-off domain's overlays are made here. Raw disks
//! take them as well as qcow2 ones. The domain's definition then names the overlays (and
//! lets each read through to its image's directory), so it starts on them next time.
//! Reverting to an external snapshot is refused (as libvirt long did): the images it names
//! are there to copy back by hand.

use std::path::{Path, PathBuf};

use blk_backend::disk::{self, qcow2, Format, OpenOptions};
use serde_json::json;

use crate::domain::Domain;
use crate::info::disk_target;
use crate::snapshot::{ask_disk, Meta};
use crate::store::{DomState, Store};
use crate::{lifecycle, Out};

/// The new overlay of disk `i`, and the image it goes on from.
struct Switch {
    index: usize,
    base: PathBuf,
    overlay: PathBuf,
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Make `sw.overlay` over `sw.base` here (the domain is shut off).
fn make_overlay(sw: &Switch, format: &str) -> Result<(), String> {
    let opts = OpenOptions {
        readonly: true,
        direct: false,
        format: if format == "qcow2" {
            Format::Qcow2
        } else {
            Format::Raw
        },
        backing_dirs: Vec::new(),
    };
    let size = disk::open(&sw.base, &opts)
        .map_err(|e| api::error_chain(&e))?
        .capacity();
    let base = sw.base.to_str().ok_or("the image's path is not UTF-8")?;
    qcow2::create_overlay(&sw.overlay, base, format, size)
        .map_err(|e| format!("cannot make {}: {e}", sw.overlay.display()))
}

pub fn create(
    store: &Store,
    mut d: Domain,
    snap: &str,
    dir: &Path,
    out: &Out,
) -> Result<(), String> {
    let name = d.name.clone();
    let rt = store.runtime(&name);
    let running = lifecycle::state(store, &name) != DomState::ShutOff;
    let switches: Vec<Switch> = d
        .disks
        .iter()
        .enumerate()
        .filter(|(_, disk)| !disk.readonly)
        .map(|(index, disk)| {
            let stem = disk.path.file_stem().unwrap_or_default().to_string_lossy();
            let file = format!("{}-{stem}.{snap}.qcow2", disk_target(index));
            Switch {
                index,
                base: absolute(&disk.path),
                overlay: rt.overlays.join(file),
            }
        })
        .collect();
    if switches.is_empty() {
        return Err(format!("domain '{name}' has no writable disk to snapshot"));
    }
    if let Some(sw) = switches.iter().find(|sw| sw.overlay.exists()) {
        return Err(format!("{} exists already", sw.overlay.display()));
    }
    let mut done = Vec::new();
    let mut failed = None;
    if running {
        let api = lifecycle::api(store, &name);
        let paused_here = api.put("vm.pause", None).is_ok();
        for sw in &switches {
            let req = json!({"op": "reopen", "image": sw.overlay});
            match ask_disk(store, &name, sw.index, req) {
                Ok(_) => done.push(sw),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if paused_here {
            if let Err(e) = api.put("vm.resume", None) {
                failed.get_or_insert(format!("domain '{name}' stays paused: {e}"));
            }
        }
    } else {
        crate::store::private_dir(&rt.overlays)?;
        for sw in &switches {
            let disk = &d.disks[sw.index];
            let format = match disk.format.as_str() {
                "auto" => crate::domain::detect_format(&disk.path).unwrap_or("raw"),
                f => f,
            }
            .to_string();
            match make_overlay(sw, &format) {
                Ok(()) => done.push(sw),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    // the definition follows whatever switched, failure or not
    for sw in &done {
        let disk = &mut d.disks[sw.index];
        disk.path = sw.overlay.clone();
        disk.format = "qcow2".into();
        if let Some(parent) = sw.base.parent() {
            if parent != rt.overlays && !disk.backing_dirs.iter().any(|p| p == parent) {
                disk.backing_dirs.push(parent.to_path_buf());
            }
        }
    }
    if !done.is_empty() {
        save_definition(store, &rt, &d)?;
    }
    if let Some(e) = failed {
        let switched: Vec<String> = done.iter().map(|sw| disk_target(sw.index)).collect();
        return Err(format!(
            "{e} (disks switched to their overlay: {})",
            if switched.is_empty() {
                "none".to_string()
            } else {
                switched.join(", ")
            }
        ));
    }
    let meta = Meta {
        name: snap.to_string(),
        created: crate::snapshot::now(),
        state: "disk-snapshot".into(),
        memory: false,
        external: switches.iter().map(|sw| sw.base.clone()).collect(),
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let text = serde_json::to_string_pretty(&meta).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("snapshot.json"), text).map_err(|e| e.to_string())?;
    let moved: Vec<String> = switches
        .iter()
        .map(|sw| format!("{} -> {}", disk_target(sw.index), sw.overlay.display()))
        .collect();
    out.print(
        format!(
            "Domain snapshot {snap} created (external: {})\n",
            moved.join(", ")
        ),
        json!({"name": name, "snapshot": snap, "ok": true, "external": meta.external,
               "overlays": switches.iter().map(|sw| &sw.overlay).collect::<Vec<_>>()}),
    );
    Ok(())
}

/// The domain's definition, where it lives: the store (defined) or its runtime directory
/// (transient).
fn save_definition(store: &Store, rt: &crate::domain::Runtime, d: &Domain) -> Result<(), String> {
    if store.persistent(&d.name) {
        return store.save(d);
    }
    let text = serde_json::to_string_pretty(d).map_err(|e| e.to_string())?;
    let path = rt.dir.join("domain.json");
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
