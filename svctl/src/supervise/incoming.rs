//! The supervisor of a domain that migrates in (`svctl migrate-receive NAME --listen URI`).
//! The domain's definition is not here yet: it comes in the migration stream, as the
//! `metadata` the source's `svctl migrate` gives `vm.send-migration`. So the vmm starts
//! first, with only its API socket, and is told to receive with `"await_devices": true`;
//! the supervisor reads the definition from `vm.migration-info` once the source's
//! configuration has come and starts the net and balloon backends and those of raw disks
//! while the RAM comes; a qcow2 disk's backend only once the source has let go of its own
//! (phase `released`) — a qcow2 image must never have two writers, and the destination's
//! backend must open it after the source's last write. Then it hands the sockets over with
//! `vm.migration-devices`. Once the VM runs here the domain is recorded and watched as any
//! other, and defined here if it was at the source.

use std::time::{Duration, Instant};

use api::client::ApiClient;
use api::types::{MigrationDevice, MigrationDevices, MigrationInfo};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::backend;
use super::{bin, give_up, start_backends, watch, write_record};
use crate::domain::{self, Domain, Runtime};
use crate::process::{Exit, ProcessId, Watched};
use crate::store::Store;

/// What `svctl migrate-receive` leaves in the runtime dir for the supervisor it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncomingRequest {
    /// `tcp:ADDR:PORT` or `unix:PATH`.
    pub url: String,
    /// How long to wait for the source to come.
    pub timeout_s: u64,
}

/// What the source's `svctl migrate` sends as `metadata` (under the key `svctl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Travelling {
    pub domain: Domain,
    /// Defined at the source (else transient, and transient here too).
    pub persistent: bool,
    /// Paused for the migration by `svctl migrate` (not `--live`): resumed here.
    pub resume: bool,
}

impl Travelling {
    pub fn from_metadata(metadata: &serde_json::Value) -> Result<Travelling, String> {
        let svctl = metadata.get("svctl").ok_or(
            "the migration did not come from `svctl migrate` (its metadata has no domain \
             definition)",
        )?;
        serde_json::from_value(svctl.clone())
            .map_err(|e| format!("the domain definition in the migration stream: {e}"))
    }
}

/// How often the supervisor looks at the vmm's progress.
const POLL: Duration = Duration::from_millis(20);

/// Receive domain `name` as `req` says; then watch it. Errors end the supervisor (the vmm
/// ends by itself when its migration fails; the source keeps the VM).
pub fn start_incoming(
    store: &Store,
    name: &str,
    rt: &Runtime,
    me: ProcessId,
    req: &IncomingRequest,
) -> Result<Exit, String> {
    let mut vmm = start_waiting_vmm(name, rt)?;
    let _ = std::fs::write(rt.vmm_pid(), format!("{}\n", vmm.pid()));
    write_record(rt, me, Some(vmm.id), &[]);
    let client = ApiClient::new(rt.api());
    let receiving = {
        let client = ApiClient::new(rt.api()).with_timeout(Duration::from_secs(24 * 3600));
        let body = json!({"receiver_url": req.url, "await_devices": true});
        std::thread::spawn(move || client.put("vm.receive-migration", Some(&body)))
    };
    let stop_vmm = |vmm: &Watched| {
        let _ = ApiClient::new(rt.api()).put("vmm.shutdown", None);
        let _ = vmm.signal(libc::SIGKILL);
    };
    let deadline = Instant::now() + Duration::from_secs(req.timeout_s);
    let travelling = wait_for(&client, &mut vmm, rt, Some(deadline), |i| {
        i.metadata.is_some()
    })
    .and_then(|info| Travelling::from_metadata(&info.metadata.unwrap_or_default()));
    let t = match travelling.and_then(|t| check(store, name, t)) {
        Ok(t) => t,
        Err(e) => {
            stop_vmm(&vmm);
            return Err(format!("domain '{name}': {e}"));
        }
    };
    // known here from now on (transient until the VM runs)
    if let Err(e) = write_transient(rt, &t.domain) {
        stop_vmm(&vmm);
        return Err(e);
    }
    // the backends whose start waits for the source's last write, and the others, started
    // while the RAM comes
    let late = |what: &str| opens_a_mutable_image(&t.domain, what);
    let ids = (me, Some(vmm.id));
    let early = match start_backends(&t.domain, rt, ids, Vec::new(), &|w| !late(w)) {
        Ok(b) => b,
        Err(e) => {
            stop_vmm(&vmm);
            return Err(format!("domain '{name}': {e}"));
        }
    };
    if let Err(e) = wait_for(&client, &mut vmm, rt, None, |i| i.phase == "released") {
        return give_up(early, format!("domain '{name}': {e}"));
    }
    let backends = match start_backends(&t.domain, rt, ids, early, &late) {
        Ok(b) => b,
        Err(e) => {
            stop_vmm(&vmm);
            return Err(format!("domain '{name}': {e}"));
        }
    };
    let devices = devices_here(&t.domain, rt);
    if let Err(e) = client.put("vm.migration-devices", Some(&json!(devices))) {
        stop_vmm(&vmm);
        return give_up(
            backends,
            format!("domain '{name}': vm.migration-devices: {e}"),
        );
    }
    match receiving.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return give_up(backends, format!("domain '{name}': {e}")),
        Err(_) => return give_up(backends, "the receiving thread panicked".into()),
    }
    tracing::info!("domain '{name}' migrated in: its VM runs here");
    if t.resume {
        if let Err(e) = client.put("vm.resume", None) {
            tracing::warn!("cannot resume the migrated domain: {e}");
        }
    }
    if t.persistent {
        match store.save(&t.domain) {
            Ok(()) => {
                let _ = std::fs::remove_file(rt.transient());
                let _ = std::fs::remove_file(rt.dir.join("domain.json"));
            }
            Err(e) => tracing::warn!("{e}: the domain stays transient here"),
        }
    }
    Ok(watch(
        rt,
        vmm,
        backends,
        me,
        Some(crate::live::Live::new(t.domain)),
    ))
}

/// Whether backend `what` of `d` serves an image whose metadata the source may still change
/// until it lets go (a disk not known to be raw: qcow2 caches its tables), so that it must
/// open it only then.
fn opens_a_mutable_image(d: &Domain, what: &str) -> bool {
    what.strip_prefix("blk")
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| d.disks.get(i))
        .is_some_and(|disk| disk.format != "raw")
}

/// The definition must be the domain asked for, valid, not another domain of that name
/// defined here (another UUID), and give no MAC twice on a bridge here.
fn check(store: &Store, name: &str, t: Travelling) -> Result<Travelling, String> {
    if t.domain.name != name {
        return Err(format!(
            "the migration brings domain '{}', not '{name}'",
            t.domain.name
        ));
    }
    t.domain.validate().map_err(|e| e.to_string())?;
    if let Ok(here) = store.load(name) {
        if here.uuid != t.domain.uuid {
            return Err(format!(
                "a domain '{name}' with another UUID ({}) is defined here; the migration \
                 brings {}",
                here.uuid, t.domain.uuid
            ));
        }
    }
    store.check_macs(&t.domain)?;
    Ok(t)
}

fn write_transient(rt: &Runtime, d: &Domain) -> Result<(), String> {
    let text = serde_json::to_string_pretty(d).map_err(|e| e.to_string())?;
    std::fs::write(rt.dir.join("domain.json"), text)
        .and_then(|()| std::fs::write(rt.transient(), ""))
        .map_err(|e| format!("cannot write {}: {e}", rt.dir.display()))
}

/// Where this host's backends of `d` listen, by the vmm's device ids.
fn devices_here(d: &Domain, rt: &Runtime) -> MigrationDevices {
    let cfg = domain::vm_config(d, rt);
    let ids = api::config::device_ids(&cfg.devices);
    MigrationDevices {
        devices: ids
            .into_iter()
            .zip(cfg.devices)
            .map(|(id, dev)| MigrationDevice {
                id,
                socket: dev.socket,
                control: dev.control,
            })
            .collect(),
    }
}

/// The vmm with only its API socket (it waits for `vm.receive-migration`), its console on the
/// domain's console socket; returns once its API answers.
fn start_waiting_vmm(name: &str, rt: &Runtime) -> Result<Watched, String> {
    let args: Vec<String> = vec![
        "--api-socket".into(),
        rt.api().display().to_string(),
        "--serial".into(),
        format!("socket={}", rt.console().display()),
        "--name".into(),
        name.into(),
    ];
    let log = backend::log_file(rt, "vmm")?;
    let child = backend::command(&bin("splitvisor"), &args, log)?
        .spawn()
        .map_err(|e| format!("cannot start splitvisor: {e}"))?;
    let mut vmm = Watched::spawned(child).map_err(|e| e.to_string())?;
    let client = ApiClient::new(rt.api());
    let start = Instant::now();
    while client.get::<serde_json::Value>("vmm.ping").is_err() {
        if let Some(exit) = vmm.exited() {
            return Err(format!("splitvisor ended ({exit}): {}", vmm_log_tail(rt)));
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = vmm.signal(libc::SIGKILL);
            return Err("splitvisor did not answer on its API socket within 30 s".into());
        }
        std::thread::sleep(POLL);
    }
    Ok(vmm)
}

fn vmm_log_tail(rt: &Runtime) -> String {
    super::tail(&rt.dir.join("vmm.log"))
}

/// Poll the incoming migration until `done` holds; an error if it failed, the vmm ended or
/// `deadline` passed.
fn wait_for(
    client: &ApiClient,
    vmm: &mut Watched,
    rt: &Runtime,
    deadline: Option<Instant>,
    done: impl Fn(&MigrationInfo) -> bool,
) -> Result<MigrationInfo, String> {
    loop {
        if let Ok(info) = client.get::<MigrationInfo>("vm.migration-info") {
            if done(&info) {
                return Ok(info);
            }
            if info.phase == "failed" {
                return Err(format!(
                    "the migration failed: {}",
                    info.error.unwrap_or_default()
                ));
            }
        }
        if let Some(exit) = vmm.exited() {
            return Err(format!(
                "splitvisor ended ({exit}) during the migration: {}",
                vmm_log_tail(rt)
            ));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err("no migration came in time".into());
        }
        std::thread::sleep(POLL);
    }
}
