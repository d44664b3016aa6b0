//! `svctl edit NAME` (virsh edit): the domain's file in `$VISUAL`/`$EDITOR` (else `vi`), a
//! copy of it really; what comes back is checked as `define` checks a file (valid JSON, a
//! valid domain, the same name and UUID, no MAC twice on a bridge) before it replaces the
//! definition. A bad edit is refused naming what is wrong, the definition is left as it was,
//! and the edited copy is kept so the work is not lost. A running domain takes the new
//! definition at its next start.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::domain::{self, Domain};
use crate::store::Store;
use crate::Out;

pub fn edit(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    let old = store.load(name)?;
    if !store.persistent(name) {
        return Err(format!(
            "domain '{name}' is transient: it has no definition to edit"
        ));
    }
    let text = serde_json::to_string_pretty(&old).map_err(|e| e.to_string())? + "\n";
    // in the (private) store's edits/, a new file each time: a refused edit kept earlier stays
    let edits = store.dir.join("edits");
    crate::store::private_dir(&edits)?;
    let copy = edits.join(format!("{name}-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&copy)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", copy.display()))?;
    run_editor(&copy)?;
    let edited = std::fs::read_to_string(&copy)
        .map_err(|e| format!("cannot read {}: {e}", copy.display()))?;
    if edited == text {
        let _ = std::fs::remove_file(&copy);
        out.print(
            format!("Domain '{name}' definition not changed\n"),
            json!({"name": name, "changed": false}),
        );
        return Ok(());
    }
    let new = checked(store, &old, &copy).map_err(|e| {
        format!(
            "domain '{name}': the edit is refused ({e}); the definition is unchanged, the edit \
             is kept in {}",
            copy.display()
        )
    })?;
    store.save(&new)?;
    let _ = std::fs::remove_file(&copy);
    let running = crate::lifecycle::state(store, name) != crate::store::DomState::ShutOff;
    let later = if running {
        " (the running domain takes it at its next start)"
    } else {
        ""
    };
    out.print(
        format!("Domain '{name}' definition edited{later}\n"),
        json!({"name": name, "changed": true, "next_start": running}),
    );
    Ok(())
}

/// `$VISUAL`, `$EDITOR` or `vi` on `file` (through `sh -c`, so the variable may hold
/// arguments, as with git and virsh).
fn run_editor(file: &Path) -> Result<(), String> {
    let set = |var| {
        std::env::var(var)
            .ok()
            .filter(|v: &String| !v.trim().is_empty())
    };
    let editor = set("VISUAL")
        .or_else(|| set("EDITOR"))
        .unwrap_or_else(|| "vi".to_string());
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file)
        .status()
        .map_err(|e| format!("cannot run the editor ({editor}): {e}"))?;
    if !status.success() {
        return Err(format!(
            "the editor ({editor}) ended with {status}: the definition is unchanged"
        ));
    }
    Ok(())
}

/// The edited definition, checked as `define` checks one, keeping the domain's identity.
fn checked(store: &Store, old: &Domain, file: &Path) -> Result<Domain, String> {
    let mut d = domain::read(file)?;
    d.validate().map_err(|e| e.to_string())?;
    if d.name != old.name {
        return Err(format!(
            "the name cannot change here (it was '{}'): define the new domain from a file",
            old.name
        ));
    }
    if d.uuid.is_empty() {
        d.uuid = old.uuid.clone();
    }
    if d.uuid != old.uuid {
        return Err(format!("the UUID cannot change (it is {})", old.uuid));
    }
    crate::define::complete(store, &mut d)?;
    Ok(d)
}
