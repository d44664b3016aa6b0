//! `svctl backend-restart NAME DEVICE`: a planned restart of one backend (to run an upgraded
//! binary, say). The domain's supervisor does it (`supervise/backend.rs`), so that it is not
//! taken for a failure: SIGTERM (the backend finishes its in-flight requests and exits; what a
//! killed splitvisor-blk leaves in flight its successor resubmits from the INFLIGHT_SHMFD
//! region the vmm keeps), wait for the exit, the same program and arguments again on the same
//! socket, READY=1. The vmm reconnects as it does to any backend that went away; we wait for
//! that too and report its view of the outage.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::domain::Domain;
use crate::info::disk_target;
use crate::lifecycle::{api, require_running};
use crate::store::Store;
use crate::supervise::control::{self, Reply, Request};
use crate::Out;

/// A backend drains for up to 10 s and gets 20 s to be ready; this covers both.
const REPLY_LIMIT: Duration = Duration::from_secs(60);
/// How long we wait for the vmm to report the device connected again.
const RECONNECT_LIMIT: Duration = Duration::from_secs(15);

/// The backend's name in the runtime dir for DEVICE: the name itself (`blk0`, `net1`,
/// `balloon`, as `dominfo` shows them), a disk's target (`vda`) or an interface's tap name.
pub fn backend_name(d: &Domain, device: &str) -> Result<String, String> {
    let mut names: Vec<(String, String)> = Vec::new();
    for i in 0..d.disks.len() {
        names.push((format!("blk{i}"), disk_target(i)));
    }
    for i in 0..d.nics.len() {
        names.push((format!("net{i}"), d.tap_name(i)));
    }
    if d.balloon.is_some() {
        names.push(("balloon".into(), "balloon".into()));
    }
    names
        .iter()
        .find(|(name, alias)| name == device || alias == device)
        .map(|(name, _)| name.clone())
        .ok_or_else(|| {
            let all: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
            format!(
                "domain '{}' has no device {device} (its backends: {})",
                d.name,
                all.join(", ")
            )
        })
}

/// The vmm's view of the device's link: (connected, reconnects, last outage).
fn link(store: &Store, name: &str, device: &str) -> Option<(bool, u64, Option<u64>)> {
    let info = api(store, name).get::<api::types::VmInfo>("vm.info").ok()?;
    let dev = info.devices.into_iter().find(|d| d.name == device)?;
    let b = dev.backend?;
    Some((b.connected, b.reconnects, b.last_outage_ms))
}

pub fn backend_restart(store: &Store, name: &str, device: &str, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    let backend = backend_name(&d, device)
        .or_else(|e| crate::live::attached_backend(store, name, device).ok_or(e))?;
    require_running(store, name)?;
    crate::lifecycle::require_supervisor(store, name, "restart the backend")?;
    let before = link(store, name, &backend);
    let req = Request::BackendRestart {
        device: backend.clone(),
    };
    let socket = store.runtime(name).supervisor_socket();
    let report = match control::request(&socket, &req, REPLY_LIMIT) {
        Ok(Reply::Restarted(r)) => r,
        Ok(Reply::Error(e)) => return Err(format!("domain '{name}': {e}")),
        Ok(r) => return Err(format!("domain '{name}': unexpected answer {r:?}")),
        Err(e) => return Err(format!("domain '{name}': {}", api::error_chain(&e))),
    };
    // the vmm's side: connected again after one more reconnect (bounded)
    let mut after = None;
    if let Some((_, reconnects, _)) = before {
        let start = Instant::now();
        while start.elapsed() < RECONNECT_LIMIT {
            match link(store, name, &backend) {
                Some(l @ (true, n, _)) if n > reconnects => {
                    after = Some(l);
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    let mut text = format!(
        "Backend {backend} of domain '{name}' restarted: pid {} -> {}\n  stopped in {} ms{}, \
         serving again after {} ms\n",
        report.old_pid,
        report.new_pid,
        report.drain_ms,
        if report.killed {
            " (killed: it did not exit on SIGTERM)"
        } else {
            ""
        },
        report.restart_ms
    );
    text += &match after {
        Some((_, n, outage)) => format!(
            "  the vmm reconnected: outage {} ms, {n} reconnect(s)\n",
            outage.map_or("-".into(), |ms| ms.to_string())
        ),
        None if before.is_none() => "  the vmm's view of the device is not available\n".into(),
        None => format!(
            "  the vmm has not reconnected within {} s\n",
            RECONNECT_LIMIT.as_secs()
        ),
    };
    let j = json!({
        "name": name, "device": backend, "old_pid": report.old_pid, "new_pid": report.new_pid,
        "drain_ms": report.drain_ms, "restart_ms": report.restart_ms, "killed": report.killed,
        "reconnected": after.is_some(), "outage_ms": after.and_then(|a| a.2),
        "reconnects": after.map(|a| a.1),
    });
    out.print(text, j);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Domain {
        serde_json::from_str(
            r#"{"name": "vm1", "uuid": "0123abcd-0000-4000-8000-000000000000",
                "memory": "512M", "kernel": "/k",
                "disks": [{"path": "/a.raw"}, {"path": "/b.raw"}], "nics": [{"bridge": "br0"}]}"#,
        )
        .expect("domain")
    }

    #[test]
    fn a_device_is_named_as_dominfo_or_as_the_guest_and_host_see_it() {
        let d = domain();
        assert_eq!(backend_name(&d, "blk1").as_deref(), Ok("blk1"));
        assert_eq!(backend_name(&d, "vda").as_deref(), Ok("blk0"));
        assert_eq!(backend_name(&d, "vdb").as_deref(), Ok("blk1"));
        assert_eq!(backend_name(&d, &d.tap_name(0)).as_deref(), Ok("net0"));
        assert_eq!(backend_name(&d, "balloon").as_deref(), Ok("balloon"));
        assert_eq!(
            backend_name(&d, "vdc"),
            Err("domain 'vm1' has no device vdc (its backends: blk0, blk1, net0, balloon)".into())
        );
    }

    #[test]
    fn an_error_is_printed_with_its_causes() {
        let e = control::ControlError::Connect {
            path: "/run/x.sock".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            api::error_chain(&e),
            "cannot reach the supervisor at /run/x.sock: No such file or directory (os error 2)"
        );
    }
}
