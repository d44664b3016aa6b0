//! The supervisor: one process per running domain (`svctl __supervise NAME`, started by
//! `svctl start` or by `splitvisor-domain@NAME.service`). Started afresh, it writes each
//! backend's configuration (`config_files.rs`), starts the backends one by one, each awaited
//! on its sd_notify READY=1 (no sleeps), then `splitvisor`. It records every process with its
//! start time (`<runtime>/backends.json`, `record.rs`), watches them through pidfds, starts a
//! backend that dies again (`backend.rs`), serves planned restarts on its control socket
//! (`control.rs`), and when the vmm ends stops the backends and removes the runtime directory
//! (`teardown.rs`).
//!
//! The supervisor is not a single point of failure: its children get no parent-death signal
//! and each runs in a session of its own, with its output in a log file, so a supervisor that
//! dies (even by SIGKILL) leaves the guest running. A supervisor started for a domain whose
//! recorded vmm still runs adopts it: it watches the vmm and the backends it did not start by
//! their pidfds and takes over restarting them.

mod attach;
mod backend;
mod config_files;
pub mod control;
pub mod incoming;
mod lock;
mod tap_maker;
pub mod teardown;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backend::{Backend, DRAIN_LIMIT};
use config_files::{write_backend_configs, write_vmm_config, BackendCommand};
use control::{ControlSocket, Reply, Request};
pub use lock::SupervisorLock;
use tap_maker::{TapMaker, TapSpec};

use crate::domain::{Domain, Runtime};
use crate::live::Live;
use crate::process::{poll_readable, Exit, ProcessError, ProcessId, Signaller, Watched};
use crate::record::Record;
use crate::store::Store;

/// The longest the supervisor sleeps between looks (it wakes at once when a process ends or a
/// client calls; this is a safety net).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The directory with our binaries: `$SVCTL_BIN_DIR`, else the one `svctl` is in.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SVCTL_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .parent()
                .map(Path::to_path_buf)
        });
    bin_in(dir, name)
}

/// `name` in `dir` if it is there, else the bare name (looked up in PATH).
fn bin_in(dir: Option<PathBuf>, name: &str) -> PathBuf {
    match dir {
        Some(d) if d.join(name).exists() => d.join(name),
        _ => PathBuf::from(name),
    }
}

/// The last line of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .to_string()
}

/// The supervisor's seccomp filter, in the domain's mode. What it starts inherits the filter
/// (and adds its own), so it allows what the vmm and the backends need besides starting,
/// watching and signalling processes and giving up privileges — the vmm's detached
/// huge-page tmpfs for guest RAM included (`DETACHED_MOUNT`, made before the vmm's own
/// filter); it still refuses ptrace, mount, namespaces, modules, BPF, keys and the rest of
/// `confine::syscalls::NEVER`.
fn confine(store: &Store, name: &str) -> Result<(), String> {
    use confine::syscalls::*;
    let mode = store
        .load(name)
        .map_or_else(|_| Default::default(), |d| d.seccomp);
    let groups = [
        RUNTIME,
        FILES,
        SOCKETS,
        SOCKET_IO,
        IO_URING,
        KVM,
        PROCESSES,
        PRIVILEGES,
        DETACHED_MOUNT,
    ];
    confine::seccomp::install("svctl supervisor", mode, &groups)
        .map_err(|e| format!("domain '{name}': {e}"))
}

/// Run the domain until its vmm ends (adopting it if it runs already); how the vmm ended.
pub fn supervise(store: &Store, name: &str) -> Result<Exit, String> {
    confine(store, name)?;
    let rt = store.runtime(name);
    crate::store::private_dir(&rt.dir)?;
    let Some(_lock) = SupervisorLock::try_acquire(&rt)? else {
        let pid = store
            .supervisor(name)
            .map_or(String::new(), |p| format!(" (pid {p})"));
        return Err(format!("domain '{name}' already has a supervisor{pid}"));
    };
    std::fs::write(rt.supervisor_pid(), format!("{}\n", std::process::id()))
        .map_err(|e| format!("cannot write {}: {e}", rt.supervisor_pid().display()))?;
    let me = ProcessId::of(std::process::id()).map_err(|e| e.to_string())?;
    let record = Record::read(&rt.backends_status()).unwrap_or_else(|e| {
        tracing::warn!("{e}: starting afresh");
        None
    });
    let running_vmm = match record.as_ref().and_then(Record::live_vmm) {
        None => None,
        Some(id) => match Watched::adopt(id) {
            Ok(vmm) => Some(vmm),
            // the guest runs but cannot be watched: leave it alone
            Err(e @ ProcessError::Pidfd { .. }) => {
                return Err(format!("cannot adopt the running vmm: {e}"))
            }
            Err(e) => {
                tracing::info!("the recorded vmm has ended ({e})");
                None
            }
        },
    };
    let result = match (running_vmm, record) {
        (Some(vmm), Some(rec)) => {
            let live = Live::read(&rt).or_else(|| match store.load(name) {
                Ok(d) => Some(Live::new(d)),
                Err(e) => {
                    tracing::warn!("{e}: no device can be attached or detached");
                    None
                }
            });
            Ok(adopt(&rt, &rec, vmm, me, live))
        }
        (_, rec) => {
            // a domain whose vmm ended while no supervisor ran: its backends go first
            if let Some(rec) = rec {
                teardown::stop_backends(teardown::recorded_backends(&rec));
            }
            match read_incoming(&rt) {
                Some(req) => incoming::start_incoming(store, name, &rt, me, &req),
                None => start_afresh(store, name, &rt, me),
            }
        }
    };
    // the vmm has ended (or never started): keep the logs, leave nothing behind
    teardown::clean_up(store, name);
    result
}

/// `svctl migrate-receive`'s request, taken (a supervisor started later boots the domain).
fn read_incoming(rt: &Runtime) -> Option<incoming::IncomingRequest> {
    let text = std::fs::read(rt.incoming()).ok()?;
    let _ = std::fs::remove_file(rt.incoming());
    serde_json::from_slice(&text)
        .map_err(|e| tracing::error!("{}: {e}", rt.incoming().display()))
        .ok()
}

/// Stop what was started (a start that failed half-way).
fn give_up<T>(backends: Vec<Backend>, e: String) -> Result<T, String> {
    teardown::stop_backends(
        backends
            .into_iter()
            .filter_map(Backend::into_process)
            .collect(),
    );
    Err(e)
}

/// Start domain `d`'s backends that `wanted` names one by one, each awaited on READY and
/// recorded at once with those `started` before (if we die now, `svctl start` finds and stops
/// what we started); `vmm`: the recorded vmm.
fn start_backends(
    d: &Domain,
    rt: &Runtime,
    (me, vmm): (ProcessId, Option<ProcessId>),
    mut backends: Vec<Backend>,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Vec<Backend>, String> {
    for BackendCommand {
        what,
        program,
        args,
        tap,
    } in write_backend_configs(d, rt)?
    {
        if !wanted(&what) {
            continue;
        }
        match Backend::start(rt, &what, bin(program), args, tap.map(TapMaker::new)) {
            Ok(b) => backends.push(b),
            Err(e) => return give_up(backends, e),
        }
        write_record(rt, me, vmm, &backends);
    }
    Ok(backends)
}

/// Start the domain's backends, then its vmm, and watch them.
fn start_afresh(store: &Store, name: &str, rt: &Runtime, me: ProcessId) -> Result<Exit, String> {
    let d = store.load(name)?;
    let backends = start_backends(&d, rt, (me, None), Vec::new(), &|_| true)?;
    // `svctl restore`: the vmm starts from the snapshot (its configuration, sockets included,
    // is the snapshot's) instead of booting
    let restore = std::fs::read(rt.restore_from()).ok();
    let _ = std::fs::remove_file(rt.restore_from());
    let vmm_args = match restore {
        Some(dir) => Ok(vec![
            "--restore".to_string(),
            String::from_utf8_lossy(&dir).into_owned(),
        ]),
        None => write_vmm_config(&d, rt),
    };
    let spawned = vmm_args.and_then(|args| {
        let log = backend::log_file(rt, "vmm")?;
        let child = backend::command(&bin("splitvisor"), &args, log)?
            .spawn()
            .map_err(|e| format!("cannot start splitvisor: {e}"))?;
        Watched::spawned(child).map_err(|e| e.to_string())
    });
    let vmm = match spawned {
        Ok(vmm) => vmm,
        Err(e) => return give_up(backends, e),
    };
    let _ = std::fs::write(rt.vmm_pid(), format!("{}\n", vmm.pid()));
    crate::vcpus::apply_pins(&d, vmm.pid());
    let live = Live::new(d);
    Ok(watch(rt, vmm, backends, me, Some(live)))
}

/// The taps of the running domain's NICs (by backend name), the attached ones included, which
/// an adopting supervisor makes again when their backend next starts.
fn taps_of(live: Option<&Live>) -> Vec<(String, TapSpec)> {
    let Some(live) = live else {
        tracing::warn!("the domain is unknown: a net backend that dies cannot get its tap again");
        return Vec::new();
    };
    let d = &live.domain;
    let mut taps = config_files::tap_specs(d);
    for n in &live.nics {
        let i = n.backend.trim_start_matches("net").parse().unwrap_or(0);
        taps.push((n.backend.clone(), TapSpec::for_nic(d, &n.nic, i)));
    }
    taps
}

/// Take over a running domain: its vmm and the recorded backends (those that ended meanwhile
/// are started again); `live`: its live definition, if known.
fn adopt(rt: &Runtime, rec: &Record, vmm: Watched, me: ProcessId, live: Option<Live>) -> Exit {
    let mut taps = taps_of(live.as_ref());
    tracing::warn!(
        vmm = vmm.pid(),
        previous = ?rec.supervisor.map(|s| s.pid),
        "adopting the running domain"
    );
    let backends = rec
        .backends
        .iter()
        .map(|(what, b)| {
            let tap = taps
                .iter()
                .position(|(n, _)| n == what)
                .map(|i| TapMaker::new(taps.swap_remove(i).1));
            Backend::adopt(what, b, tap)
        })
        .collect();
    watch(rt, vmm, backends, me, live)
}

fn write_record(rt: &Runtime, me: ProcessId, vmm: Option<ProcessId>, backends: &[Backend]) {
    let rec = Record {
        backends: backends
            .iter()
            .map(|b| (b.name.clone(), b.record()))
            .collect(),
        vmm,
        supervisor: Some(me),
    };
    if let Err(e) = rec.write(&rt.backends_status()) {
        tracing::error!("{e}: the domain cannot be adopted if this supervisor dies");
    }
}

/// Watch the vmm until it ends; meanwhile restart backends that die and serve the control
/// socket (attached devices change `live`, the domain's live definition, written here first).
/// Then stop the backends.
fn watch(
    rt: &Runtime,
    mut vmm: Watched,
    mut backends: Vec<Backend>,
    me: ProcessId,
    mut live: Option<Live>,
) -> Exit {
    if let Some(l) = &live {
        if let Err(e) = l.write(rt) {
            tracing::warn!("{e}: devices attached now are not known to the next supervisor");
        }
    }
    let vmm_id = vmm.id;
    match vmm.signaller().map(forward_stop_signals) {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => tracing::warn!("cannot forward stop signals: {e}"),
    }
    let control = ControlSocket::bind(&rt.supervisor_socket())
        .map_err(|e| tracing::warn!("{e}: `svctl backend-restart` will not work"))
        .ok();
    // last: once the record names us, `svctl start` (adopting) returns and the domain is ours
    write_record(rt, me, Some(vmm_id), &backends);
    let exit = loop {
        if let Some(exit) = vmm.exited() {
            break exit;
        }
        let now = Instant::now();
        let mut changed = false;
        for b in backends.iter_mut() {
            changed |= b.tick(rt, now);
        }
        if let Some((stream, req)) = control.as_ref().and_then(ControlSocket::next) {
            control::answer(stream, &handle(rt, &mut backends, live.as_mut(), req));
            changed = true;
        }
        if changed {
            write_record(rt, me, Some(vmm_id), &backends);
        }
        // sleep until a process ends, a client calls or a restart is due
        let mut fds = vec![vmm.pidfd()];
        fds.extend(backends.iter().filter_map(Backend::pidfd));
        fds.extend(control.as_ref().map(ControlSocket::fd));
        let due = backends.iter().filter_map(Backend::deadline).min();
        let timeout = due.map_or(MAX_SLEEP, |at| {
            at.saturating_duration_since(Instant::now()).min(MAX_SLEEP)
        });
        let _ = poll_readable(&fds, timeout);
    };
    tracing::info!(%exit, "vmm ended");
    teardown::stop_backends(
        backends
            .into_iter()
            .filter_map(Backend::into_process)
            .collect(),
    );
    exit
}

fn handle(
    rt: &Runtime,
    backends: &mut Vec<Backend>,
    live: Option<&mut Live>,
    req: Request,
) -> Reply {
    let no_live =
        || Reply::Error("the supervisor does not know the running domain's definition".into());
    match req {
        Request::AttachDisk { target, disk } => match live {
            Some(live) => attach::attach_disk(rt, backends, live, target, disk),
            None => no_live(),
        },
        Request::AttachNic { nic } => match live {
            Some(live) => attach::attach_nic(rt, backends, live, nic),
            None => no_live(),
        },
        Request::Detach { backend } => match live {
            Some(live) => attach::detach(rt, backends, live, &backend),
            None => no_live(),
        },
        Request::BackendRestart { device } => {
            let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
            let names = names.join(", ");
            match backends.iter_mut().find(|b| b.name == device) {
                Some(b) => match b.planned_restart(rt, DRAIN_LIMIT) {
                    Ok(report) => Reply::Restarted(report),
                    Err(e) => Reply::Error(e),
                },
                None => Reply::Error(format!(
                    "no backend named '{device}' (the domain's backends: {names})"
                )),
            }
        }
    }
}

/// Stop signals to the supervisor become a hard stop of the vmm (SIGTERM).
fn forward_stop_signals(vmm: Signaller) -> std::io::Result<()> {
    // SAFETY: sigemptyset/sigaddset fill a set we own; pthread_sigmask blocks it in this
    // thread and the threads created afterwards (a process we start gets an empty mask: the
    // standard library resets it in the child).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigwait on a valid set into our local.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            // through the vmm's pidfd: never another process that took over its PID
            if let Err(e) = vmm.signal(libc::SIGTERM) {
                tracing::warn!("cannot stop the vmm: {e}");
            }
        })?;
    Ok(())
}

/// A runtime directory of its own for a test (the tests run in parallel), removed when dropped.
#[cfg(test)]
pub(crate) struct TempRuntime(pub Runtime);

#[cfg(test)]
impl TempRuntime {
    pub fn new() -> TempRuntime {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("svctl-supervise-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("runtime dir");
        TempRuntime(Runtime {
            overlays: dir.join("overlays"),
            dir,
        })
    }
}

#[cfg(test)]
impl Drop for TempRuntime {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0.dir);
    }
}

#[cfg(test)]
mod tests;
