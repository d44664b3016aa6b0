//! The verbs that start and stop domains: start, create, shutdown, destroy, suspend, resume.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api::client::ApiClient;

use crate::domain::{self, Domain};
use crate::store::{alive, read_pid, DomState, Store};
use crate::supervise::tail;

pub fn api(store: &Store, name: &str) -> ApiClient {
    ApiClient::new(store.runtime(name).api())
}

/// The state of a domain; paused/running from the vmm itself.
pub fn state(store: &Store, name: &str) -> DomState {
    if store.supervisor(name).is_none() {
        return DomState::ShutOff;
    }
    match api(store, name).get::<api::types::VmInfo>("vm.info") {
        Ok(info) if info.state == api::types::VmState::Paused => DomState::Paused,
        _ => DomState::Running,
    }
}

pub fn require_running(store: &Store, name: &str) -> Result<(), String> {
    store.load(name)?;
    if store.supervisor(name).is_none() {
        return Err(format!("domain '{name}' is not running"));
    }
    Ok(())
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

/// Start a domain: launch its supervisor, wait until the vmm answers on its API.
pub fn start(store: &Store, name: &str, transient: Option<&Domain>) -> Result<u32, String> {
    let d = match transient {
        Some(d) => d.clone(),
        None => store.load(name)?,
    };
    if store.supervisor(name).is_some() {
        return Err(format!("domain '{name}' is already running"));
    }
    preflight(store, &d)?;
    let rt = store.runtime(name);
    // what a supervisor killed hard may have left
    let _ = std::fs::remove_dir_all(&rt.dir);
    std::fs::create_dir_all(&rt.dir)
        .map_err(|e| format!("cannot create {}: {e}", rt.dir.display()))?;
    if let Some(d) = transient {
        let text = serde_json::to_string_pretty(d).map_err(|e| e.to_string())?;
        std::fs::write(rt.dir.join("domain.json"), text).map_err(|e| e.to_string())?;
        std::fs::write(rt.transient(), "").map_err(|e| e.to_string())?;
    }
    let log = std::fs::File::create(rt.log()).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["__supervise", name])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // its own session: a terminal closing does not stop the domain
        // SAFETY: setsid is async-signal-safe and only affects the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the supervisor: {e}"))?;
    std::fs::write(rt.supervisor_pid(), format!("{}\n", child.id())).map_err(|e| e.to_string())?;
    let client = api(store, name);
    let start = Instant::now();
    loop {
        if client.get::<serde_json::Value>("vmm.ping").is_ok() {
            // reaped by whoever adopts it once we exit; its PID file is what we track
            return Ok(child.id());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let logs = store.dir.join("logs").join(name);
            let why = [logs.join("supervisor.log"), logs.join("vmm.log")]
                .iter()
                .map(|p| tail(p))
                .find(|l| l != "(no output)")
                .unwrap_or_else(|| status.to_string());
            return Err(format!("domain '{name}' failed to start: {why}"));
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

/// Wait (bounded) until the domain's supervisor has ended. True if it did.
pub fn wait_down(store: &Store, name: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if store.supervisor(name).is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn shutdown(store: &Store, name: &str, timeout: Duration) -> Result<(), String> {
    require_running(store, name)?;
    api(store, name)
        .put("vm.shutdown", None)
        .map_err(|e| format!("domain '{name}': {e}"))?;
    if timeout.is_zero() {
        return Ok(());
    }
    if wait_down(store, name, timeout) {
        Ok(())
    } else {
        Err(format!(
            "domain '{name}' did not power off within {}s (use `svctl destroy {name}`)",
            timeout.as_secs()
        ))
    }
}

/// Hard stop: the vmm's `vm.stop`, else SIGKILL; then wait for the cleanup.
pub fn destroy(store: &Store, name: &str) -> Result<(), String> {
    require_running(store, name)?;
    let rt = store.runtime(name);
    if api(store, name).put("vm.stop", None).is_err() {
        if let Some(pid) = read_pid(&rt.vmm_pid()).filter(|&p| alive(p)) {
            // SAFETY: kill of the domain's vmm PID, which is alive (checked just before).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    if wait_down(store, name, Duration::from_secs(15)) {
        return Ok(());
    }
    // the supervisor is stuck: kill it; its children follow (PDEATHSIG)
    if let Some(pid) = store.supervisor(name) {
        // SAFETY: kill of the domain's supervisor PID, alive just now.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    if wait_down(store, name, Duration::from_secs(5)) {
        let _ = std::fs::remove_dir_all(&rt.dir);
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
    if store.exists(&d.name) || store.supervisor(&d.name).is_some() {
        return Err(format!("domain '{}' already exists", d.name));
    }
    start(store, &d.name.clone(), Some(&d))?;
    Ok(d)
}
