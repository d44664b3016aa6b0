//! The supervisor: one process per running domain (`svctl __supervise NAME`, started by
//! `svctl start`). It writes each backend's configuration (`<runtime>/blk0.json` …, the
//! domain's translation into `api::backend` types) and starts the backends with `--config`,
//! one by one, each awaited on its sd_notify
//! READY=1 (no sleeps), then `splitvisor`; waits for the vmm to end (guest poweroff, `destroy`,
//! a crash); then stops the backends and removes the runtime directory. Every child gets
//! PR_SET_PDEATHSIG, so none outlives the supervisor even if it is killed.

use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::domain::{vm_config, Domain, Runtime};
use crate::store::Store;

const READY_LIMIT: Duration = Duration::from_secs(20);
const STOP_LIMIT: Duration = Duration::from_secs(3);

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

struct Proc {
    what: String,
    child: Child,
}

/// A backend the supervisor keeps running: its process, how to start it again, and its
/// restarts.
struct Backend {
    proc: Proc,
    program: &'static str,
    args: Vec<String>,
    restarts: Restarts,
}

/// The process's log in the runtime dir, appended to (a restarted backend keeps its history).
fn log_file(rt: &Runtime, what: &str) -> Result<File, String> {
    let path = rt.dir.join(format!("{what}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn command(program: PathBuf, args: &[String], log: File) -> Result<Command, String> {
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(err);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Start one backend and wait for its READY=1 (or its death, or the limit).
fn start_backend(
    rt: &Runtime,
    what: &str,
    program: &str,
    args: Vec<String>,
) -> Result<Proc, String> {
    let notify_path = rt.dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).map_err(|e| format!("notify socket: {e}"))?;
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let mut cmd = command(bin(program), &args, log_file(rt, what)?)?;
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let result = loop {
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "{what} backend ({program}) exited with {status} before it was ready: {}",
                tail(&rt.dir.join(format!("{what}.log")))
            ));
        }
        if start.elapsed() > READY_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break Err(format!(
                "{what} backend ({program}) was not ready within {READY_LIMIT:?}"
            ));
        }
    };
    let _ = std::fs::remove_file(&notify_path);
    result?;
    tracing::info!(what, pid = child.id(), "backend ready");
    Ok(Proc {
        what: what.into(),
        child,
    })
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

/// Each backend of the domain: its name in the runtime dir, its program and its
/// configuration (what the program's `--config` file holds).
fn backend_configs(
    d: &Domain,
    rt: &Runtime,
) -> Result<Vec<(String, &'static str, String)>, String> {
    let json = |v: Result<String, serde_json::Error>| v.map_err(|e| e.to_string());
    let mut out = Vec::new();
    for i in 0..d.disks.len() {
        let cfg = json(serde_json::to_string_pretty(&d.blk_backend(i, rt)))?;
        out.push((format!("blk{i}"), "splitvisor-blk", cfg));
    }
    for i in 0..d.nics.len() {
        let cfg = json(serde_json::to_string_pretty(&d.net_backend(i, rt)))?;
        out.push((format!("net{i}"), "splitvisor-net", cfg));
    }
    if let Some(b) = d.balloon_backend(rt) {
        let cfg = json(serde_json::to_string_pretty(&b))?;
        out.push(("balloon".into(), "splitvisor-balloon", cfg));
    }
    Ok(out)
}

/// A program's arguments: `--config` and its configuration file.
fn config_args(path: &Path) -> Vec<String> {
    vec!["--config".to_string(), path.display().to_string()]
}

/// How to start one backend: its name in the runtime dir, its program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BackendCommand {
    what: String,
    program: &'static str,
    args: Vec<String>,
}

/// Write every backend's configuration file, `<runtime>/<name>.json` (all of them before the
/// first backend starts, so that a failure here leaves nothing running); how to start each.
fn write_backend_configs(d: &Domain, rt: &Runtime) -> Result<Vec<BackendCommand>, String> {
    let mut configs = Vec::new();
    for (what, program, cfg) in backend_configs(d, rt)? {
        let cfg_path = rt.dir.join(format!("{what}.json"));
        std::fs::write(&cfg_path, cfg)
            .map_err(|e| format!("cannot write {}: {e}", cfg_path.display()))?;
        configs.push(BackendCommand {
            what,
            program,
            args: config_args(&cfg_path),
        });
    }
    Ok(configs)
}

/// Write the vmm's configuration file, `<runtime>/vm.json`; the vmm's arguments.
fn write_vmm_config(d: &Domain, rt: &Runtime) -> Result<Vec<String>, String> {
    let cfg_path = rt.dir.join("vm.json");
    let cfg = serde_json::to_string_pretty(&vm_config(d, rt)).map_err(|e| e.to_string())?;
    std::fs::write(&cfg_path, cfg)
        .map_err(|e| format!("cannot write {}: {e}", cfg_path.display()))?;
    Ok(config_args(&cfg_path))
}

/// How often the supervisor looks at its children.
const POLL: Duration = Duration::from_millis(50);
/// A backend that dies this often within [`RESTART_WINDOW`] is left down.
const RESTART_LIMIT: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(30);

/// A backend's restarts: how many, the recent ones (for the limit), and whether the
/// supervisor gave up on it.
#[derive(Default)]
struct Restarts {
    count: u64,
    recent: std::collections::VecDeque<Instant>,
    gave_up: bool,
}

/// Start every backend that died again (unless it keeps dying: then it is left down, with one
/// log line). Whether anything changed.
fn revive_dead(rt: &Runtime, backends: &mut [Backend]) -> bool {
    let mut changed = false;
    for b in backends.iter_mut().filter(|b| !b.restarts.gave_up) {
        let Ok(Some(status)) = b.proc.child.try_wait() else {
            continue;
        };
        changed = true;
        let what = b.proc.what.clone();
        let r = &mut b.restarts;
        let now = Instant::now();
        r.recent.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if r.recent.len() >= RESTART_LIMIT {
            r.gave_up = true;
            tracing::error!(
                what,
                %status,
                "backend died {RESTART_LIMIT} times within {RESTART_WINDOW:?}: left down"
            );
            eprintln!("svctl: backend {what} keeps dying ({status}); left down");
            continue;
        }
        r.recent.push_back(now);
        tracing::warn!(what, %status, "backend died; starting it again");
        match start_backend(rt, &what, b.program, b.args.clone()) {
            Ok(p) => {
                b.proc = p;
                b.restarts.count += 1;
            }
            // counted as a death: the next look tries again, up to the limit
            Err(e) => tracing::error!(what, error = %e, "backend restart failed"),
        }
    }
    changed
}

/// `<runtime>/backends.json`: each backend's PID, restarts and whether it is left down
/// (`svctl dominfo` shows it).
fn write_status(rt: &Runtime, backends: &[Backend]) {
    let status: serde_json::Map<String, serde_json::Value> = backends
        .iter()
        .map(|b| {
            let v = serde_json::json!({"pid": b.proc.child.id(), "restarts": b.restarts.count,
                                       "down": b.restarts.gave_up});
            (b.proc.what.clone(), v)
        })
        .collect();
    let _ = std::fs::write(
        rt.backends_status(),
        serde_json::Value::Object(status).to_string(),
    );
}

fn stop(procs: &mut [Proc]) {
    for p in procs.iter_mut() {
        if !matches!(p.child.try_wait(), Ok(None)) {
            continue; // already gone (and reaped: its PID may belong to someone else now)
        }
        // SAFETY: kill on our own child's PID, checked above to be running and not reaped.
        unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    }
    let start = Instant::now();
    for p in procs.iter_mut() {
        loop {
            match p.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if start.elapsed() > STOP_LIMIT => {
                    tracing::warn!(what = %p.what, "backend ignored SIGTERM: killed");
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Stop signals to the supervisor become a hard stop of the vmm (SIGTERM).
fn forward_stop_signals(vmm_pid: u32) -> std::io::Result<()> {
    // SAFETY: sigemptyset/sigaddset fill a set we own; pthread_sigmask blocks it in this
    // thread and the threads created afterwards.
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
            // SAFETY: kill of the vmm child's PID; it is reaped only by our main thread after it
            // exits, and then this process exits too.
            unsafe { libc::kill(vmm_pid as i32, libc::SIGTERM) };
        })?;
    Ok(())
}

/// Run the domain until its vmm ends; the exit code is the vmm's.
pub fn supervise(store: &Store, name: &str) -> Result<i32, String> {
    let d = store.load(name)?;
    let rt = store.runtime(name);
    // under systemd nobody wrote our PID (svctl start did, before us)
    std::fs::create_dir_all(&rt.dir)
        .map_err(|e| format!("cannot create {}: {e}", rt.dir.display()))?;
    std::fs::write(rt.supervisor_pid(), format!("{}\n", std::process::id()))
        .map_err(|e| format!("cannot write {}: {e}", rt.supervisor_pid().display()))?;
    let result = run(&d, &rt);
    // keep the logs of the last run next to the domain, then leave nothing behind
    let logs = store.dir.join("logs").join(name);
    if std::fs::create_dir_all(&logs).is_ok() {
        if let Ok(entries) = std::fs::read_dir(&rt.dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let _ = std::fs::rename(e.path(), logs.join(e.file_name()));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&rt.dir);
    result
}

fn run(d: &Domain, rt: &Runtime) -> Result<i32, String> {
    let mut procs = Vec::new();
    let mut backends = Vec::new();
    for BackendCommand {
        what,
        program,
        args,
    } in write_backend_configs(d, rt)?
    {
        match start_backend(rt, &what, program, args.clone()) {
            Ok(p) => backends.push(Backend {
                proc: p,
                program,
                args,
                restarts: Restarts::default(),
            }),
            Err(e) => {
                procs.extend(backends.into_iter().map(|b: Backend| b.proc));
                stop(&mut procs);
                return Err(e);
            }
        }
    }
    write_status(rt, &backends);
    let stop_all = |backends: Vec<Backend>| {
        let mut procs: Vec<Proc> = backends.into_iter().map(|b| b.proc).collect();
        stop(&mut procs);
    };
    let args = match write_vmm_config(d, rt) {
        Ok(args) => args,
        Err(e) => {
            stop_all(backends);
            return Err(e);
        }
    };
    let spawned = log_file(rt, "vmm")
        .and_then(|log| command(bin("splitvisor"), &args, log))
        .and_then(|mut cmd| {
            cmd.spawn()
                .map_err(|e| format!("cannot start splitvisor: {e}"))
        });
    let mut vmm = match spawned {
        Ok(c) => c,
        Err(e) => {
            stop_all(backends);
            return Err(e);
        }
    };
    let _ = std::fs::write(rt.vmm_pid(), format!("{}\n", vmm.id()));
    if let Err(e) = forward_stop_signals(vmm.id()) {
        tracing::warn!("cannot forward stop signals: {e}");
    }
    // while the guest runs, a backend that dies is started again (the vmm reconnects to it)
    let status = loop {
        match vmm.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                stop_all(backends);
                return Err(format!("waiting for splitvisor: {e}"));
            }
        }
        if revive_dead(rt, &mut backends) {
            write_status(rt, &backends);
        }
        std::thread::sleep(POLL);
    };
    tracing::info!(%status, "vmm ended");
    stop_all(backends);
    Ok(status.code().unwrap_or(128))
}

#[cfg(test)]
mod tests {
    use api::backend::balloon::BalloonBackendConfig;
    use api::backend::blk::BlkBackendConfig;
    use api::backend::net::NetBackendConfig;
    use api::config::VmConfig;
    use serde::de::DeserializeOwned;

    use super::*;

    /// A runtime directory of its own (the tests run in parallel), removed when dropped.
    struct TempRuntime(Runtime);

    impl TempRuntime {
        fn new() -> TempRuntime {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("svctl-supervise-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("runtime dir");
            TempRuntime(Runtime { dir })
        }
    }

    impl Drop for TempRuntime {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0.dir);
        }
    }

    fn domain(json: &str) -> Domain {
        serde_json::from_str(json).expect("domain")
    }

    fn web() -> Domain {
        domain(
            r#"{"name": "web", "uuid": "0123abcd-0000-4000-8000-000000000000", "memory": "512M",
                "kernel": "/k", "disks": [{"path": "/a.raw", "format": "raw"},
                {"path": "/b.qcow2", "format": "qcow2", "readonly": true, "queues": 2}],
                "nics": [{"bridge": "br0"}], "balloon": {"stats_interval": 5}}"#,
        )
    }

    /// The file as the backend reads it (its `--config`).
    fn read<T: DeserializeOwned>(path: &str) -> T {
        let text = std::fs::read_to_string(path).expect("config file");
        serde_json::from_str(&text).expect("the backend's config type")
    }

    fn config_path(args: &[String]) -> &str {
        match args {
            [flag, path] if flag == "--config" => path,
            _ => panic!("not `--config FILE`: {args:?}"),
        }
    }

    #[test]
    fn each_backend_gets_its_derived_config_file() {
        let (d, tmp) = (web(), TempRuntime::new());
        let rt = &tmp.0;
        let started = write_backend_configs(&d, rt).expect("configs");
        let at = |what: &str| rt.dir.join(format!("{what}.json")).display().to_string();
        let want: Vec<BackendCommand> = [
            ("blk0", "splitvisor-blk"),
            ("blk1", "splitvisor-blk"),
            ("net0", "splitvisor-net"),
            ("balloon", "splitvisor-balloon"),
        ]
        .iter()
        .map(|(what, program)| {
            let args = vec!["--config".to_string(), at(what)];
            BackendCommand {
                what: what.to_string(),
                program,
                args,
            }
        })
        .collect();
        assert_eq!(started, want);
        for (i, started) in started[..2].iter().enumerate() {
            let blk: BlkBackendConfig = read(config_path(&started.args));
            assert_eq!(blk, d.blk_backend(i, rt), "blk{i}");
        }
        let net: NetBackendConfig = read(config_path(&started[2].args));
        assert_eq!(net, d.net_backend(0, rt));
        let balloon: BalloonBackendConfig = read(config_path(&started[3].args));
        assert_eq!(Some(balloon), d.balloon_backend(rt));
    }

    #[test]
    fn a_domain_without_devices_starts_no_backend() {
        let d = domain(r#"{"name": "bare", "memory": "512M", "kernel": "/k", "balloon": null}"#);
        let tmp = TempRuntime::new();
        assert_eq!(write_backend_configs(&d, &tmp.0).expect("configs"), []);
        let files = std::fs::read_dir(&tmp.0.dir).expect("dir").count();
        assert_eq!(files, 0, "no file written");
    }

    #[test]
    fn the_vmm_gets_the_domains_vm_config() {
        let (d, tmp) = (web(), TempRuntime::new());
        let rt = &tmp.0;
        let args = write_vmm_config(&d, rt).expect("vm.json");
        let path = rt.dir.join("vm.json");
        assert_eq!(args, ["--config".to_string(), path.display().to_string()]);
        let vm: VmConfig = read(config_path(&args));
        assert_eq!(vm, vm_config(&d, rt));
        assert_eq!(vm.devices.len(), 4, "two disks, a NIC and the balloon");
    }

    #[test]
    fn an_unwritable_runtime_dir_is_reported_with_the_path() {
        let rt = Runtime {
            dir: "/nonexistent/svctl-runtime".into(),
        };
        let err = write_backend_configs(&web(), &rt).expect_err("refused");
        assert!(
            err.starts_with("cannot write /nonexistent/svctl-runtime/blk0.json: "),
            "{err}"
        );
        let err = write_vmm_config(&web(), &rt).expect_err("refused");
        assert!(
            err.starts_with("cannot write /nonexistent/svctl-runtime/vm.json: "),
            "{err}"
        );
    }

    #[test]
    fn a_child_gets_its_argv_and_the_log_for_its_output() {
        let tmp = TempRuntime::new();
        let log = log_file(&tmp.0, "child").expect("log");
        let script = "echo \"$0 $1\"; echo to-stderr >&2";
        let args = ["-c", script, "first", "second"].map(String::from);
        let mut cmd = command(PathBuf::from("/bin/sh"), &args, log).expect("command");
        assert_eq!(cmd.get_program(), "/bin/sh");
        assert!(cmd.get_args().eq(args.iter().map(std::ffi::OsStr::new)));
        let status = cmd.status().expect("run");
        assert!(status.success(), "{status}");
        let text = std::fs::read_to_string(tmp.0.dir.join("child.log")).expect("log");
        assert_eq!(text, "first second\nto-stderr\n");
    }

    #[test]
    fn binaries_are_found_beside_svctl_else_in_path() {
        let tmp = TempRuntime::new();
        let dir = tmp.0.dir.clone();
        std::fs::write(dir.join("splitvisor-blk"), "").expect("file");
        assert_eq!(
            bin_in(Some(dir.clone()), "splitvisor-blk"),
            dir.join("splitvisor-blk")
        );
        assert_eq!(
            bin_in(Some(dir), "splitvisor-net"),
            PathBuf::from("splitvisor-net")
        );
        assert_eq!(bin_in(None, "splitvisor"), PathBuf::from("splitvisor"));
    }
}
