//! The verbs that start and stop domains: start (afresh, or adopting a domain whose vmm runs
//! without a supervisor), create, shutdown, destroy, suspend, resume. Each works from the
//! domain's record (`record.rs`) when its supervisor is gone.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::client::ApiClient;

use crate::domain::{self, Domain};
use crate::process::{ProcessId, Watched};
use crate::store::{DomState, Store};
use crate::supervise::{tail, teardown};

pub fn api(store: &Store, name: &str) -> ApiClient {
    ApiClient::new(store.runtime(name).api())
}

/// The state of a domain: it runs while its vmm does (paused/running from the vmm itself), or
/// while its supervisor starts it.
pub fn state(store: &Store, name: &str) -> DomState {
    if store.vmm(name).is_none() {
        return match store.supervisor(name) {
            Some(_) => DomState::Running,
            None => DomState::ShutOff,
        };
    }
    match api(store, name).get::<api::types::VmInfo>("vm.info") {
        Ok(info) if info.state == api::types::VmState::Paused => DomState::Paused,
        _ => DomState::Running,
    }
}

pub fn require_running(store: &Store, name: &str) -> Result<(), String> {
    store.load(name)?;
    if state(store, name) == DomState::ShutOff {
        return Err(format!("domain '{name}' is not running"));
    }
    Ok(())
}

/// A running domain's supervisor must be there for what only it can do (`then`: what to do
/// once it has adopted the domain again).
pub fn require_supervisor(store: &Store, name: &str, then: &str) -> Result<(), String> {
    match store.supervisor(name) {
        Some(_) => Ok(()),
        None => Err(format!(
            "domain '{name}' has no supervisor (it died): `svctl start {name}` adopts the \
             running domain, then {then}"
        )),
    }
}

/// Checks that need no process: no MAC twice on a bridge, the files the domain names exist.
fn preflight(store: &Store, d: &Domain) -> Result<(), String> {
    d.validate().map_err(|e| e.to_string())?;
    store.check_macs(d)?;
    let mut files = vec![("kernel", d.kernel.clone())];
    files.extend(d.initramfs.clone().map(|p| ("initramfs", p)));
    files.extend(d.disks.iter().map(|x| ("disk", x.path.clone())));
    for (what, path) in files {
        if !path.is_file() {
            return Err(format!(
                "domain '{}': {what} {} does not exist",
                d.name,
                path.display()
            ));
        }
    }
    Ok(())
}

/// How `start` went.
pub enum Started {
    /// A new supervisor started the domain.
    Afresh,
    /// The domain's vmm ran without a supervisor: a new one adopted it.
    Adopted { vmm: u32, supervisor: u32 },
}

/// Launch `svctl __supervise NAME` in a session of its own (a terminal closing does not stop
/// the domain), its output appended to `<runtime>/NAME/supervisor.log`.
pub fn spawn_supervisor(store: &Store, name: &str) -> Result<Child, String> {
    let rt = store.runtime(name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(rt.log())
        .map_err(|e| format!("cannot create {}: {e}", rt.log().display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["__supervise", name])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and only affects the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    // it writes supervisor.pid once it holds the domain's supervisor lock (a second one that
    // does not get the lock exits with an error); reaped by whoever adopts it once we exit
    cmd.spawn()
        .map_err(|e| format!("cannot start the supervisor: {e}"))
}

/// Why a supervisor we started ended early, from the logs it left.
pub fn failed(store: &Store, name: &str, status: std::process::ExitStatus) -> String {
    let logs = store.dir.join("logs").join(name);
    let rt = store.runtime(name);
    let why = [rt.log(), logs.join("supervisor.log"), logs.join("vmm.log")]
        .iter()
        .map(|p| tail(p))
        .find(|l| l != "(no output)")
        .unwrap_or_else(|| status.to_string());
    format!("domain '{name}' failed to start: {why}")
}

/// Start a domain: launch its supervisor, wait until the vmm answers on its API. A domain
/// whose vmm runs without a supervisor (it died) gets a new one that adopts it.
pub fn start(store: &Store, name: &str, transient: Option<&Domain>) -> Result<Started, String> {
    start_from(store, name, transient, None)
}

/// [`start`], or with `restore`, the domain's vmm started from that snapshot directory
/// (`splitvisor --restore`) instead of booting: its backends start as usual, on the same
/// sockets the snapshot names (the runtime directory is the domain's, as when it was saved).
pub fn start_from(
    store: &Store,
    name: &str,
    transient: Option<&Domain>,
    restore: Option<&Path>,
) -> Result<Started, String> {
    let d = match transient {
        Some(d) => d.clone(),
        None => store.load(name)?,
    };
    if store.supervisor(name).is_some() {
        return Err(format!("domain '{name}' is already running"));
    }
    if let Some(vmm) = store.vmm(name) {
        return adopt(store, name, vmm);
    }
    // what a supervisor that died left behind: backends of a vmm that has ended
    if !teardown::reap_unsupervised(store, name)? {
        return Err(format!(
            "domain '{name}' is being started or stopped by another svctl"
        ));
    }
    preflight(store, &d)?;
    let rt = store.runtime(name);
    let _ = std::fs::remove_dir_all(&rt.dir);
    crate::store::private_dir(&rt.dir)?;
    if let Some(d) = transient {
        let text = serde_json::to_string_pretty(d).map_err(|e| e.to_string())?;
        std::fs::write(rt.dir.join("domain.json"), text).map_err(|e| e.to_string())?;
        std::fs::write(rt.transient(), "").map_err(|e| e.to_string())?;
    }
    if let Some(dir) = restore {
        std::fs::write(rt.restore_from(), dir.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
    }
    let mut child = spawn_supervisor(store, name)?;
    let client = api(store, name);
    let start = Instant::now();
    loop {
        if client.get::<serde_json::Value>("vmm.ping").is_ok() {
            return Ok(Started::Afresh);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(store, name, status));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "domain '{name}' did not come up within 60 s (see {})",
                rt.log().display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A new supervisor for a domain whose vmm runs: returns once it has taken the domain over
/// (its PID is in the record).
fn adopt(store: &Store, name: &str, vmm: ProcessId) -> Result<Started, String> {
    let mut child = spawn_supervisor(store, name)?;
    let supervisor = child.id();
    let start = Instant::now();
    loop {
        let rec = store.record(name);
        if rec
            .and_then(|r| r.supervisor)
            .is_some_and(|s| s.pid == supervisor)
        {
            return Ok(Started::Adopted {
                vmm: vmm.pid,
                supervisor,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(store, name, status));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "domain '{name}': the new supervisor did not take over within 60 s (see {})",
                store.runtime(name).log().display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (bounded) until the domain is down: its vmm has ended and its supervisor has stopped
/// the backends and cleaned up, or, with no supervisor, we have. True if it is.
pub fn wait_down(store: &Store, name: &str, limit: Duration) -> Result<bool, String> {
    let start = Instant::now();
    loop {
        let down = store.supervisor(name).is_none() && store.vmm(name).is_none();
        if down && teardown::reap_unsupervised(store, name)? {
            return Ok(true);
        }
        if start.elapsed() >= limit {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn shutdown(store: &Store, name: &str, timeout: Duration) -> Result<(), String> {
    require_running(store, name)?;
    api(store, name)
        .put("vm.shutdown", None)
        .map_err(|e| format!("domain '{name}': {e}"))?;
    if timeout.is_zero() {
        return Ok(());
    }
    if wait_down(store, name, timeout)? {
        Ok(())
    } else {
        Err(format!(
            "domain '{name}' did not power off within {}s (use `svctl destroy {name}`)",
            timeout.as_secs()
        ))
    }
}

/// Boot the guest again in the same vmm: `acpi` asks the guest (power button; its power-off
/// is taken as a reboot), otherwise a hard reset.
pub fn reboot(store: &Store, name: &str, acpi: bool) -> Result<(), String> {
    require_running(store, name)?;
    api(store, name)
        .put("vm.reboot", Some(&serde_json::json!({"acpi": acpi})))
        .map(drop)
        .map_err(|e| format!("domain '{name}': {e}"))
}

/// SIGKILL a recorded process through its pidfd (never one that took over its PID).
fn kill(id: Option<ProcessId>) {
    if let Some(p) = id.and_then(|id| Watched::adopt(id).ok()) {
        let _ = p.signal(libc::SIGKILL);
    }
}

/// Hard stop: the vmm's `vm.stop`, else SIGKILL; then wait for the cleanup (the supervisor's,
/// or ours when it has none).
pub fn destroy(store: &Store, name: &str) -> Result<(), String> {
    require_running(store, name)?;
    if api(store, name).put("vm.stop", None).is_err() {
        kill(store.vmm(name));
    }
    if wait_down(store, name, Duration::from_secs(15))? {
        return Ok(());
    }
    // the supervisor is stuck: kill it (its children do not follow it), then the vmm; the
    // backends are stopped by the cleanup
    kill(store.supervisor(name).and_then(|p| ProcessId::of(p).ok()));
    kill(store.vmm(name));
    if wait_down(store, name, Duration::from_secs(5))? {
        return Ok(());
    }
    Err(format!("domain '{name}': its processes did not stop"))
}

pub fn pause(store: &Store, name: &str, pause: bool) -> Result<(), String> {
    require_running(store, name)?;
    let endpoint = if pause { "vm.pause" } else { "vm.resume" };
    api(store, name)
        .put(endpoint, None)
        .map(|_| ())
        .map_err(|e| format!("domain '{name}': {e}"))
}

/// `create FILE`: a transient domain, started and forgotten when it stops.
pub fn create(store: &Store, file: &std::path::Path) -> Result<Domain, String> {
    let mut d = domain::read(file)?;
    if d.uuid.is_empty() {
        d.uuid = domain::new_uuid();
    }
    d.validate().map_err(|e| e.to_string())?;
    d.record_detected_formats();
    if store.exists(&d.name) || state(store, &d.name) != DomState::ShutOff {
        return Err(format!("domain '{}' already exists", d.name));
    }
    start(store, &d.name.clone(), Some(&d))?;
    Ok(d)
}
