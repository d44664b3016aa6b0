//! The verbs that name a domain (virsh's): domuuid, domid (the vmm's PID while it runs, as
//! `list` shows it), domname (from a UUID or an Id) and domstate.

use serde_json::json;

use crate::lifecycle::state;
use crate::store::Store;
use crate::Out;

pub fn domuuid(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    out.print(
        format!("{}\n", d.uuid),
        json!({"name": name, "uuid": d.uuid}),
    );
    Ok(())
}

pub fn domid(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    store.load(name)?;
    let id = store.vmm(name).map(|v| v.pid);
    out.print(
        format!("{}\n", id.map_or("-".to_string(), |i| i.to_string())),
        json!({"name": name, "id": id}),
    );
    Ok(())
}

/// The domain whose UUID or Id (vmm PID) `key` is.
pub fn domname(store: &Store, key: &str, out: &Out) -> Result<(), String> {
    let found = store.names().into_iter().find(|name| {
        let uuid = store.load(name).map(|d| d.uuid).unwrap_or_default();
        let id = store.vmm(name).map(|v| v.pid.to_string());
        (!uuid.is_empty() && uuid.eq_ignore_ascii_case(key)) || id.as_deref() == Some(key)
    });
    let name = found.ok_or_else(|| format!("no domain has the UUID or Id {key:?}"))?;
    out.print(format!("{name}\n"), json!({"name": name}));
    Ok(())
}

pub fn domstate(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    store.load(name)?;
    let st = state(store, name);
    out.print(
        format!("{st}\n"),
        json!({"name": name, "state": st.to_string()}),
    );
    Ok(())
}
