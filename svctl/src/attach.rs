//! `svctl attach-disk`, `detach-disk`, `attach-interface`, `detach-interface`, as virsh has
//! them. `--live` changes the running domain: the supervisor starts the device's backend
//! (`supervise/attach.rs`) and records it in the live definition (`live.rs`), then the vmm
//! adds the device (`vm.add-device`, ACPI PCI hotplug); detaching, the vmm removes it once
//! the guest has ejected it (`vm.remove-device`) and the supervisor stops its backend.
//! `--config` changes the domain's definition for its next start; `--persistent` does both
//! (only `--config` while it is shut off); with none of them: the domain as it is now.
//!
//! A disk's TARGET is its name for people, as in virsh (the guest names its disks in its own
//! order). The disks of a definition are named by position (`vda`, `vdb`…), so `--config`
//! takes the next free one; detached from a definition, the disks after it move up a name.
//! Devices the domain booted with cannot be detached while it runs (yet): `--config`.

use std::path::Path;
use std::time::Duration;

use api::backend::net::MacAddress;
use api::client::ApiClient;
use serde_json::json;

use crate::domain::{detect_format, Disk, Domain, Nic};
use crate::info::disk_target;
use crate::lifecycle::state;
use crate::live::{Live, NicView};
use crate::store::{DomState, Store};
use crate::supervise::control::{self, Attached, Reply, Request};
use crate::Out;

/// The supervisor starts a backend within 20 s (its READY limit).
const SUPERVISOR_LIMIT: Duration = Duration::from_secs(60);
/// How long the guest gets to eject a device.
const EJECT_MS: u64 = 20_000;

/// What `--live`, `--config` and `--persistent` said.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ScopeFlags {
    /// Change the running domain.
    #[arg(long)]
    pub live: bool,
    /// Change the domain's definition (its next start).
    #[arg(long)]
    pub config: bool,
    /// Both (the definition only while it is shut off).
    #[arg(long)]
    pub persistent: bool,
}

/// What a change applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scope {
    live: bool,
    config: bool,
}

fn scope(store: &Store, name: &str, f: ScopeFlags) -> Result<Scope, String> {
    store.load(name)?;
    let running = state(store, name) != DomState::ShutOff;
    let mut s = Scope {
        live: f.live || (f.persistent && running),
        config: f.config || f.persistent,
    };
    if !s.live && !s.config {
        s = Scope {
            live: running,
            config: !running,
        };
    }
    if s.live && !running {
        return Err(format!("domain '{name}' is not running (use --config)"));
    }
    if s.config && !store.persistent(name) {
        return Err(format!(
            "domain '{name}' is transient: it has no definition to change (use --live)"
        ));
    }
    Ok(s)
}

/// The running domain's live definition.
fn live_of(store: &Store, name: &str) -> Result<Live, String> {
    crate::lifecycle::require_supervisor(store, name, "try again")?;
    Live::read(&store.runtime(name)).ok_or_else(|| {
        format!("domain '{name}' has no live definition (it was started by an older svctl)")
    })
}

fn ask(store: &Store, name: &str, req: &Request) -> Result<Reply, String> {
    let socket = store.runtime(name).supervisor_socket();
    match control::request(&socket, req, SUPERVISOR_LIMIT) {
        Ok(Reply::Error(e)) => Err(format!("domain '{name}': {e}")),
        Ok(r) => Ok(r),
        Err(e) => Err(format!("domain '{name}': {}", api::error_chain(&e))),
    }
}

fn vmm(store: &Store, name: &str) -> ApiClient {
    ApiClient::new(store.runtime(name).api()).with_timeout(Duration::from_millis(EJECT_MS * 2))
}

/// Have the vmm add the device whose backend the supervisor started; its PCI address. If the
/// vmm refuses, the backend is stopped again.
fn add_to_vmm(store: &Store, name: &str, a: &Attached, what: &str) -> Result<String, String> {
    match vmm(store, name).put("vm.add-device", Some(&json!({"device": a.device}))) {
        Ok(reply) => Ok(reply["bdf"].as_str().unwrap_or_default().to_string()),
        Err(e) => {
            let undo = Request::Detach {
                backend: a.backend.clone(),
            };
            if let Err(u) = ask(store, name, &undo) {
                tracing::warn!("{u}: the backend of the refused device still runs");
            }
            Err(format!("domain '{name}': {what}: {e}"))
        }
    }
}

/// Have the vmm remove device `backend` (the guest ejects it), then its backend stopped; the
/// backend's PID.
fn remove_live(store: &Store, name: &str, backend: &str, what: &str) -> Result<u32, String> {
    let body = json!({"id": backend, "timeout_ms": EJECT_MS});
    vmm(store, name)
        .put("vm.remove-device", Some(&body))
        .map_err(|e| format!("domain '{name}': {what}: {e}"))?;
    match ask(
        store,
        name,
        &Request::Detach {
            backend: backend.into(),
        },
    )? {
        Reply::Detached(pid) => Ok(pid),
        r => Err(format!("domain '{name}': unexpected answer {r:?}")),
    }
}

/// A disk's target: `vd` and letters.
fn check_target(name: &str, target: &str) -> Result<(), String> {
    let letters = target.strip_prefix("vd").unwrap_or_default();
    if letters.is_empty() || letters.len() > 2 || !letters.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "domain '{name}': target {target:?} is not a disk name (vdb, vdc…)"
        ));
    }
    Ok(())
}

pub struct DiskArgs<'a> {
    pub source: &'a Path,
    pub target: &'a str,
    pub format: Option<&'a str>,
    pub readonly: bool,
}

pub fn attach_disk(
    store: &Store,
    name: &str,
    a: &DiskArgs,
    flags: ScopeFlags,
    out: &Out,
) -> Result<(), String> {
    let sc = scope(store, name, flags)?;
    check_target(name, a.target)?;
    let path = std::fs::canonicalize(a.source)
        .map_err(|e| format!("domain '{name}': disk source {}: {e}", a.source.display()))?;
    let format = match a.format {
        Some(f) => f.to_string(),
        // as `define` records it: a raw image stays raw, a qcow2 one is probed
        None => match detect_format(&path) {
            Some("raw") => "raw".into(),
            _ => "auto".into(),
        },
    };
    let disk = Disk {
        path,
        format,
        readonly: a.readonly,
        queues: 1,
        backing_dirs: Vec::new(),
    };
    let config = match sc.config {
        true => Some(with_disk(store.load(name)?, a.target, &disk)?),
        false => None,
    };
    let (mut backend, mut bdf) = (None, None);
    if sc.live {
        let live = live_of(store, name)?;
        if let Some(v) = live.disk_views().iter().find(|v| v.disk.path == disk.path) {
            return Err(format!(
                "domain '{name}': {} is already its disk {}",
                disk.path.display(),
                v.target
            ));
        }
        let req = Request::AttachDisk {
            target: a.target.into(),
            disk: disk.clone(),
        };
        let Reply::Attached(att) = ask(store, name, &req)? else {
            return Err(format!("domain '{name}': the supervisor did not attach"));
        };
        bdf = Some(add_to_vmm(
            store,
            name,
            &att,
            &format!("disk {}", a.target),
        )?);
        backend = Some(att.backend);
    }
    if let Some(d) = config {
        store.save(&d)?;
    }
    out.print(
        "Disk attached successfully\n".into(),
        json!({"domain": name, "target": a.target, "source": disk.path, "format": disk.format,
               "backend": backend, "bdf": bdf, "live": sc.live, "config": sc.config}),
    );
    Ok(())
}

/// The definition `d` with `disk` as its next disk, which must be named `target`.
fn with_disk(mut d: Domain, target: &str, disk: &Disk) -> Result<Domain, String> {
    let next = disk_target(d.disks.len());
    if target != next {
        return Err(format!(
            "domain '{}': its definition names disks by their order: the next one is {next}, \
             not {target}",
            d.name
        ));
    }
    if d.disks.iter().any(|x| x.path == disk.path) {
        return Err(format!(
            "domain '{}': {} is already one of its disks",
            d.name,
            disk.path.display()
        ));
    }
    d.disks.push(disk.clone());
    d.validate().map_err(|e| e.to_string())?;
    Ok(d)
}

pub fn detach_disk(
    store: &Store,
    name: &str,
    target: &str,
    flags: ScopeFlags,
    out: &Out,
) -> Result<(), String> {
    let sc = scope(store, name, flags)?;
    let config = match sc.config {
        true => {
            let mut d = store.load(name)?;
            let i = (0..d.disks.len())
                .find(|&i| disk_target(i) == target || d.disks[i].path.as_os_str() == target)
                .ok_or_else(|| format!("domain '{name}': its definition has no disk {target}"))?;
            d.disks.remove(i);
            Some(d)
        }
        false => None,
    };
    let mut pid = None;
    if sc.live {
        let live = live_of(store, name)?;
        let views = live.disk_views();
        let v = views
            .iter()
            .find(|v| {
                v.target == target || v.backend == target || v.disk.path.as_os_str() == target
            })
            .ok_or_else(|| {
                let all: Vec<&str> = views.iter().map(|v| v.target.as_str()).collect();
                format!(
                    "domain '{name}' has no disk {target} (its disks: {})",
                    all.join(", ")
                )
            })?;
        if !v.attached {
            return Err(boot_device(name, &format!("disk {}", v.target)));
        }
        pid = Some(remove_live(
            store,
            name,
            &v.backend,
            &format!("disk {}", v.target),
        )?);
    }
    if let Some(d) = config {
        store.save(&d)?;
    }
    out.print(
        "Disk detached successfully\n".into(),
        json!({"domain": name, "target": target, "backend_pid": pid, "live": sc.live,
               "config": sc.config}),
    );
    Ok(())
}

fn boot_device(name: &str, what: &str) -> String {
    format!(
        "domain '{name}': {what} was there when it started: it cannot be detached while the \
         domain runs (--config removes it from the next start)"
    )
}

/// A NIC of `kind` (virsh's interface types: `bridge` on a bridge, `ethernet` on a given
/// tap).
fn nic_of(name: &str, kind: &str, source: &str, mac: Option<&str>) -> Result<Nic, String> {
    let (bridge, tap) = match kind {
        "bridge" => (Some(source.to_string()), None),
        "ethernet" => (None, Some(source.to_string())),
        other => {
            return Err(format!(
                "domain '{name}': interface type {other:?} is not supported (bridge or ethernet)"
            ))
        }
    };
    let mac = match mac {
        Some(m) => Some(
            m.parse::<MacAddress>()
                .map_err(|e| format!("domain '{name}': {e}"))?
                .to_string(),
        ),
        None => None,
    };
    Ok(Nic {
        bridge,
        tap,
        mac,
        queues: 1,
    })
}

fn kind_of(nic: &Nic) -> &'static str {
    match nic.bridge {
        Some(_) => "bridge",
        None => "ethernet",
    }
}

pub fn attach_interface(
    store: &Store,
    name: &str,
    kind: &str,
    source: &str,
    mac: Option<&str>,
    flags: ScopeFlags,
    out: &Out,
) -> Result<(), String> {
    let sc = scope(store, name, flags)?;
    let mut nic = nic_of(name, kind, source, mac)?;
    let (mut backend, mut bdf, mut tap) = (None, None, None);
    if sc.live {
        let live = live_of(store, name)?;
        // the MAC the supervisor will give it, checked against every other domain's first
        let d = &live.domain;
        let used: Vec<String> = live.nic_views().iter().map(|v| v.backend.clone()).collect();
        let used: Vec<&str> = used.iter().map(String::as_str).collect();
        let i = Live::free_index("net", d.nics.len(), &used);
        nic.mac = Some(d.mac_for(&nic, i));
        let mut check = d.clone();
        check.nics = live.nic_views().into_iter().map(|v| v.nic).collect();
        check.nics.push(nic.clone());
        store.check_macs(&check)?;
        let Reply::Attached(att) = ask(store, name, &Request::AttachNic { nic: nic.clone() })?
        else {
            return Err(format!("domain '{name}': the supervisor did not attach"));
        };
        let what = format!("interface {}", att.tap.clone().unwrap_or_default());
        bdf = Some(add_to_vmm(store, name, &att, &what)?);
        nic.mac = att.mac.clone();
        (backend, tap) = (Some(att.backend), att.tap);
    }
    if sc.config {
        let mut d = store.load(name)?;
        d.nics.push(nic.clone());
        d.record_generated_macs();
        d.validate().map_err(|e| e.to_string())?;
        store.check_macs(&d)?;
        nic.mac = d.nics.last().and_then(|n| n.mac.clone());
        store.save(&d)?;
    }
    out.print(
        "Interface attached successfully\n".into(),
        json!({"domain": name, "type": kind, "source": source, "mac": nic.mac,
               "interface": tap, "backend": backend, "bdf": bdf, "live": sc.live,
               "config": sc.config}),
    );
    Ok(())
}

/// The index of the one NIC of `kind` (with MAC `mac` if given) among `nics` (each with its
/// MAC).
fn pick(
    name: &str,
    nics: &[(Nic, String)],
    kind: &str,
    mac: Option<&str>,
) -> Result<usize, String> {
    let mac = mac
        .map(|m| m.parse::<MacAddress>().map(|m| m.to_string()))
        .transpose()
        .map_err(|e| format!("domain '{name}': {e}"))?;
    let found: Vec<usize> = (0..nics.len())
        .filter(|&i| {
            let (nic, m) = &nics[i];
            kind_of(nic) == kind && mac.as_ref().is_none_or(|want| want == m)
        })
        .collect();
    match found[..] {
        [one] => Ok(one),
        [] => Err(format!(
            "domain '{name}' has no {kind} interface{}",
            mac.map_or(String::new(), |m| format!(" with MAC {m}"))
        )),
        _ => Err(format!(
            "domain '{name}' has several {kind} interfaces: say which with --mac"
        )),
    }
}

pub fn detach_interface(
    store: &Store,
    name: &str,
    kind: &str,
    mac: Option<&str>,
    flags: ScopeFlags,
    out: &Out,
) -> Result<(), String> {
    let sc = scope(store, name, flags)?;
    let config = match sc.config {
        true => {
            let mut d = store.load(name)?;
            let nics: Vec<(Nic, String)> = (0..d.nics.len())
                .map(|i| (d.nics[i].clone(), d.mac(i)))
                .collect();
            d.nics.remove(pick(name, &nics, kind, mac)?);
            Some(d)
        }
        false => None,
    };
    let mut detached: Option<(String, u32)> = None;
    if sc.live {
        let views: Vec<NicView> = live_of(store, name)?.nic_views();
        let nics: Vec<(Nic, String)> = views
            .iter()
            .map(|v| (v.nic.clone(), v.mac.clone()))
            .collect();
        let v = &views[pick(name, &nics, kind, mac)?];
        if !v.attached {
            return Err(boot_device(name, &format!("interface {}", v.tap)));
        }
        let pid = remove_live(store, name, &v.backend, &format!("interface {}", v.tap))?;
        detached = Some((v.tap.clone(), pid));
    }
    if let Some(d) = config {
        store.save(&d)?;
    }
    let (tap, pid) = detached.unzip();
    out.print(
        "Interface detached successfully\n".into(),
        json!({"domain": name, "type": kind, "interface": tap, "backend_pid": pid,
               "live": sc.live, "config": sc.config}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Domain {
        serde_json::from_str(
            r#"{"name": "web", "uuid": "0123abcd-0000-4000-8000-000000000000", "memory": "512M",
                "kernel": "/k", "disks": [{"path": "/a.raw", "format": "raw"}],
                "nics": [{"bridge": "br0"}, {"bridge": "br0"}, {"tap": "t9"}]}"#,
        )
        .expect("domain")
    }

    fn disk(path: &str) -> Disk {
        Disk {
            path: path.into(),
            format: "raw".into(),
            readonly: false,
            queues: 1,
            backing_dirs: Vec::new(),
        }
    }

    #[test]
    fn targets_are_vd_and_one_or_two_letters() {
        for ok in ["vdb", "vdz", "vdaa"] {
            assert_eq!(check_target("web", ok), Ok(()), "{ok}");
        }
        for bad in ["vd", "sda", "vdB", "vd1", "vdabc", "../x"] {
            let e = check_target("web", bad).expect_err(bad);
            assert!(e.contains("is not a disk name"), "{e}");
        }
    }

    #[test]
    fn the_definition_takes_a_disk_only_as_its_next_target_and_only_once() {
        let d = with_disk(domain(), "vdb", &disk("/b.raw")).expect("appended");
        assert_eq!(d.disks.len(), 2);
        let e = with_disk(domain(), "vdc", &disk("/b.raw")).expect_err("not next");
        assert!(e.contains("the next one is vdb, not vdc"), "{e}");
        let e = with_disk(domain(), "vdb", &disk("/a.raw")).expect_err("twice");
        assert!(e.contains("/a.raw is already one of its disks"), "{e}");
    }

    #[test]
    fn interface_types_and_macs_are_checked() {
        let n = nic_of("web", "bridge", "br1", Some("52:54:00:AA:bb:01")).expect("nic");
        assert_eq!(n.bridge.as_deref(), Some("br1"));
        assert_eq!(n.mac.as_deref(), Some("52:54:00:aa:bb:01"));
        let n = nic_of("web", "ethernet", "tap3", None).expect("nic");
        assert_eq!(n.tap.as_deref(), Some("tap3"));
        let e = nic_of("web", "direct", "eth0", None).expect_err("type");
        assert!(e.contains("\"direct\" is not supported"), "{e}");
        assert!(nic_of("web", "bridge", "br1", Some("nonsense")).is_err());
    }

    #[test]
    fn an_interface_is_picked_by_type_and_mac_or_the_ambiguity_is_named() {
        let d = domain();
        let nics: Vec<(Nic, String)> = (0..3).map(|i| (d.nics[i].clone(), d.mac(i))).collect();
        assert_eq!(pick("web", &nics, "ethernet", None), Ok(2));
        let e = pick("web", &nics, "bridge", None).expect_err("two");
        assert!(
            e.contains("several bridge interfaces: say which with --mac"),
            "{e}"
        );
        assert_eq!(pick("web", &nics, "bridge", Some(&d.mac(1))), Ok(1));
        let e = pick("web", &nics, "bridge", Some("52:00:00:00:00:99")).expect_err("none");
        assert!(
            e.contains("no bridge interface with MAC 52:00:00:00:00:99"),
            "{e}"
        );
    }
}
