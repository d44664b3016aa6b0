//! A domain whose supervisor died, without a VM: `sleep` processes stand in for its vmm and
//! backends, recorded in `<runtime>/vm1/backends.json` as a supervisor records them (the
//! record's on-disk format is checked here too). `svctl` must list it as running from the
//! record alone, refuse a recycled PID, adopt it with `start` (a new supervisor that watches
//! processes it did not start), and destroy it with or without a supervisor, leaving nothing
//! behind. The same with a real guest, SIGKILLed supervisor and all, is in
//! integration-tests/tests/svctl_lifecycle.rs.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Host {
    dir: PathBuf,
    procs: Vec<Child>,
}

impl Host {
    fn new(tag: &str) -> Host {
        let dir = std::env::temp_dir().join(format!("svctl-adopt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run/vm1")).expect("runtime dir");
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, "").expect("kernel");
        let domain = dir.join("vm1.json");
        let text = json!({"name": "vm1", "memory": "512M", "kernel": kernel,
                          "disks": [{"path": kernel, "format": "raw"}], "balloon": null});
        std::fs::write(&domain, text.to_string()).expect("domain file");
        let host = Host {
            dir,
            procs: Vec::new(),
        };
        let out = host.svctl(&["define", &domain.display().to_string()]);
        assert!(out.status.success(), "{}", text_of(&out.stderr));
        host
    }

    fn svctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_svctl"))
            .args(args)
            .env("SVCTL_STORE", self.dir.join("store"))
            .env("SVCTL_RUNTIME", self.dir.join("run"))
            .env("RUST_LOG", "info")
            .output()
            .expect("svctl runs")
    }

    /// A process that stands in for one of the domain's (a `sleep`); its PID.
    fn stand_in(&mut self) -> u32 {
        let child = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep");
        let pid = child.id();
        self.procs.push(child);
        pid
    }

    /// What a supervisor that died leaves: the record of a vmm and a disk backend.
    fn record(&self, vmm: Value, blk0: u32) -> Value {
        let rec = json!({
            "backends": {"blk0": {"down": false, "pid": blk0, "restarts": 2,
                                   "planned_restarts": 0, "start_time": start_time(blk0),
                                   "program": "/bin/sleep", "args": ["600"]}},
            "vmm": vmm,
            "supervisor": {"pid": 1, "start_time": 0},
        });
        let path = self.dir.join("run/vm1/backends.json");
        std::fs::write(path, rec.to_string()).expect("record");
        rec
    }

    fn alive(&mut self, pid: u32) -> bool {
        let child = self.procs.iter_mut().find(|c| c.id() == pid);
        matches!(child.map(Child::try_wait), Some(Ok(None)))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let sup = std::fs::read_to_string(self.dir.join("run/vm1/supervisor.pid"));
        if let Some(pid) = sup.ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill of a test's own supervisor, best effort at the end.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `/proc/PID/stat` field 22.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(')').expect("comm").1;
    rest.split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .expect("start time")
}

fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", text_of(&out.stderr));
    text_of(&out.stdout)
}

#[test]
fn a_domain_without_a_supervisor_runs_from_its_record_and_start_adopts_it() {
    let mut h = Host::new("adopt");
    let (vmm, blk0) = (h.stand_in(), h.stand_in());
    h.record(json!({"pid": vmm, "start_time": start_time(vmm)}), blk0);
    let list = ok(&h.svctl(&["list"]));
    assert!(
        list.lines()
            .any(|l| l.contains(&vmm.to_string()) && l.contains("vm1") && l.contains("running")),
        "{list}"
    );
    let info = ok(&h.svctl(&["dominfo", "vm1"]));
    assert_eq!(field(&info, "Id"), vmm.to_string(), "{info}");
    assert!(field(&info, "Supervisor").starts_with("none"), "{info}");
    assert_eq!(field(&info, "Process blk0"), "running, 2 restart(s)");
    let err = text_of(&h.svctl(&["backend-restart", "vm1", "vda"]).stderr);
    assert!(err.contains("has no supervisor"), "{err}");

    let out = h.svctl(&["--json", "start", "vm1"]);
    let started: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(started["adopted"], true, "{}", text_of(&out.stderr));
    assert_eq!(started["id"], vmm);
    let sup = started["supervisor"].as_u64().expect("supervisor pid");
    let info = ok(&h.svctl(&["dominfo", "vm1"]));
    assert_eq!(field(&info, "Supervisor"), format!("running (pid {sup})"));
    let rec: Value = serde_json::from_str(
        &std::fs::read_to_string(h.dir.join("run/vm1/backends.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(rec["supervisor"]["pid"], sup);
    assert_eq!(rec["vmm"]["pid"], vmm);
    assert_eq!(rec["backends"]["blk0"]["pid"], blk0, "the same backend");
    let again = h.svctl(&["start", "vm1"]);
    assert!(text_of(&again.stderr).contains("already running"));

    // destroy: no API to ask, so the vmm is killed; the new supervisor sees it end (not its
    // child: through its pidfd), stops the backend and cleans up
    let t0 = Instant::now();
    ok(&h.svctl(&["destroy", "vm1"]));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(!h.alive(vmm) && !h.alive(blk0), "processes left");
    assert!(!h.dir.join("run/vm1").exists(), "runtime dir left");
    let log = std::fs::read_to_string(h.dir.join("store/logs/vm1/supervisor.log"))
        .expect("the supervisor's log is kept");
    assert!(log.contains("adopting the running domain"), "{log}");
    let list = ok(&h.svctl(&["list", "--all"]));
    assert!(list.contains("shut off"), "{list}");
}

#[test]
fn a_domain_without_a_supervisor_is_destroyed_from_its_record() {
    let mut h = Host::new("destroy");
    let (vmm, blk0) = (h.stand_in(), h.stand_in());
    h.record(json!({"pid": vmm, "start_time": start_time(vmm)}), blk0);
    ok(&h.svctl(&["destroy", "vm1"]));
    assert!(!h.alive(vmm) && !h.alive(blk0), "processes left");
    assert!(!h.dir.join("run/vm1").exists(), "runtime dir left");
}

#[test]
fn a_recycled_vmm_pid_is_not_taken_for_the_domain() {
    let mut h = Host::new("recycled");
    let (other, blk0) = (h.stand_in(), h.stand_in());
    // the recorded vmm's PID now belongs to another process (a different start time)
    h.record(
        json!({"pid": other, "start_time": start_time(other) + 1}),
        blk0,
    );
    let list = ok(&h.svctl(&["list", "--all"]));
    assert!(
        list.lines()
            .any(|l| l.contains("vm1") && l.contains("shut off")),
        "{list}"
    );
    let err = text_of(&h.svctl(&["destroy", "vm1"]).stderr);
    assert!(err.contains("is not running"), "{err}");
    assert!(h.alive(other), "another process was killed");
}
