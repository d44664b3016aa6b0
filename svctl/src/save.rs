//! `svctl save NAME DIR` and `svctl restore DIR` (virsh save/restore): the running domain's
//! state written by its vmm (`vm.snapshot`: registers, devices, guest RAM in a sparse file)
//! into DIR with the domain's definition beside it (`domain.json`), the domain then stopped;
//! and the domain started again from DIR, where it was (its backends start as usual, the vmm
//! with `--restore`). The disks are not copied: restore expects them as they were at the
//! save, which holds as long as the domain is not started in between (as with virsh).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::domain::Domain;
use crate::store::Store;
use crate::{lifecycle, Out};

/// How long the vmm may take to write the state (guest RAM at disk speed).
const SAVE_LIMIT: Duration = Duration::from_secs(600);

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The bytes a directory's files take on disk (sparse files count what they hold).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

pub fn save(store: &Store, name: &str, dir: &Path, out: &Out) -> Result<(), String> {
    lifecycle::require_running(store, name)?;
    let d = store.load(name)?;
    let dir = absolute(dir)?;
    if std::fs::read_dir(&dir).is_ok_and(|mut e| e.next().is_some()) {
        return Err(format!("{} exists and is not empty", dir.display()));
    }
    let t0 = Instant::now();
    let url = format!("file://{}", dir.display());
    // paused first, and left so: a guest that ran on after the snapshot would write to its
    // disks what the saved memory does not know
    let api = lifecycle::api(store, name).with_timeout(SAVE_LIMIT);
    let paused_here = api.put("vm.pause", None).is_ok();
    if let Err(e) = api.put("vm.snapshot", Some(&json!({ "destination_url": url }))) {
        if paused_here {
            let _ = api.put("vm.resume", None);
        }
        return Err(format!("domain '{name}': cannot save its state: {e}"));
    }
    let text = serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?;
    let def = dir.join("domain.json");
    std::fs::write(&def, text).map_err(|e| format!("cannot write {}: {e}", def.display()))?;
    lifecycle::destroy(store, name)?;
    let bytes = disk_usage(&dir);
    let secs = t0.elapsed().as_secs_f64();
    out.print(
        format!(
            "Domain '{name}' saved to {} ({:.1} MiB on disk, {secs:.1} s)\n",
            dir.display(),
            bytes as f64 / f64::from(1 << 20)
        ),
        json!({"name": name, "ok": true, "file": dir, "bytes": bytes, "seconds": secs}),
    );
    Ok(())
}

/// A saved state runs only on the machine it was saved with: refuse a domain redefined since
/// (its backends would be started for the new definition), naming what changed.
pub fn same_definition(current: &Domain, saved: &Domain, file: &Path) -> Result<(), String> {
    let (now, then) = (
        serde_json::to_value(current).map_err(|e| e.to_string())?,
        serde_json::to_value(saved).map_err(|e| e.to_string())?,
    );
    let keys = now
        .as_object()
        .into_iter()
        .chain(then.as_object())
        .flat_map(|o| o.keys());
    let mut changed: Vec<&str> = keys
        .filter(|k| now.get(*k) != then.get(*k) && *k != "autostart")
        .map(String::as_str)
        .collect();
    changed.sort_unstable();
    changed.dedup();
    if changed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "domain '{}' was redefined since its state was saved ({} changed): the state needs \
         the definition it was saved with (`svctl define {}`)",
        current.name,
        changed.join(", "),
        file.display()
    ))
}

pub fn restore(store: &Store, dir: &Path, out: &Out) -> Result<(), String> {
    let dir = absolute(dir)?;
    let def = dir.join("domain.json");
    if !def.exists() || !dir.join("state.bin").exists() {
        return Err(format!(
            "{} is not a saved domain (it has no domain.json and state.bin: `svctl save` \
             writes them)",
            dir.display()
        ));
    }
    let d = crate::domain::read(&def)?;
    let name = d.name.clone();
    // a domain no longer defined comes back as a transient one (virsh does the same)
    let transient = match store.load(&name) {
        Ok(current) => {
            same_definition(&current, &d, &def)?;
            None
        }
        Err(_) => Some(d),
    };
    lifecycle::start_from(store, &name, transient.as_ref(), Some(&dir))?;
    out.print(
        format!("Domain '{name}' restored from {}\n", dir.display()),
        json!({"name": name, "ok": true, "file": dir}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(extra: serde_json::Value) -> Domain {
        let mut v = json!({"name": "vm1", "memory": "512M", "kernel": "/k"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_domain_redefined_since_the_save_is_refused_naming_what_changed() {
        let file = Path::new("/saved/domain.json");
        let saved = domain(json!({}));
        assert!(same_definition(&saved, &saved, file).is_ok());
        // autostart is not part of the machine
        assert!(same_definition(&domain(json!({"autostart": true})), &saved, file).is_ok());
        let err = same_definition(&domain(json!({"memory": "1G", "vcpus": 2})), &saved, file)
            .unwrap_err();
        assert!(err.contains("(memory, vcpus changed)"), "{err}");
        assert!(err.contains("svctl define /saved/domain.json"), "{err}");
    }
}
