//! `svctl`'s error cases and store handling, run as a real process against a throwaway store
//! (no VM needed: every case here fails, or succeeds, before any process is started). The
//! running-domain cases (start twice, console of a stopped domain after a shutdown…) are in
//! integration-tests/tests/svctl_lifecycle.rs, inside the sandbox.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Store {
    dir: PathBuf,
}

impl Store {
    fn new(tag: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("svctl-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Store { dir }
    }

    fn svctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_svctl"))
            .args(args)
            .env("SVCTL_STORE", self.dir.join("store"))
            .env("SVCTL_RUNTIME", self.dir.join("run"))
            .output()
            .unwrap()
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// A domain file whose kernel exists (an empty file: nothing here boots it).
    fn domain(&self, name: &str, extra: &str) -> String {
        let kernel = self.file("vmlinuz", "");
        self.file(
            &format!("{name}.json"),
            &format!(r#"{{"name": "{name}", "memory": "512M", "kernel": "{kernel}"{extra}}}"#),
        )
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails_with(o: &Output, msg: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    let err = stderr(o);
    assert!(
        err.starts_with("svctl: error: ") && err.contains(msg),
        "expected {msg:?} in {err:?}"
    );
}

#[test]
fn every_verb_names_an_unknown_domain() {
    let s = Store::new("unknown");
    let verbs: &[&[&str]] = &[
        &["start", "ghost"],
        &["undefine", "ghost"],
        &["dominfo", "ghost"],
        &["dumpconfig", "ghost"],
        &["console", "ghost"],
        &["suspend", "ghost"],
        &["resume", "ghost"],
        &["shutdown", "ghost"],
        &["destroy", "ghost"],
        &["setmem", "ghost", "256M"],
        &["dommemstat", "ghost"],
        &["setvcpus", "ghost", "2", "--config"],
        &["domblklist", "ghost"],
        &["domiflist", "ghost"],
        &["domblkstat", "ghost"],
        &["domifstat", "ghost"],
        &["autostart", "ghost"],
    ];
    for args in verbs {
        fails_with(&s.svctl(args), "no domain named 'ghost'");
    }
}

#[test]
fn define_list_dominfo_dumpconfig_and_undefine_a_domain() {
    let s = Store::new("define");
    let file = s.domain(
        "web",
        r#", "vcpus": 2, "disks": [{"path": "/img/web.qcow2", "format": "qcow2"}]"#,
    );
    let o = s.svctl(&["define", &file]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Domain 'web' defined"));
    let list = stdout(&s.svctl(&["list", "--all"]));
    assert!(
        list.lines()
            .any(|l| l.contains("web") && l.contains("shut off")),
        "{list}"
    );
    assert!(!stdout(&s.svctl(&["list"])).contains("web"), "not running");
    let info = stdout(&s.svctl(&["dominfo", "web"]));
    for want in [
        "State:         shut off",
        "CPU(s):        2",
        "Max memory:    524288 KiB",
        "Persistent:    yes",
    ] {
        let (k, v) = want.split_once(':').unwrap();
        assert!(
            info.lines()
                .any(|l| l.starts_with(k) && l.ends_with(v.trim())),
            "{want:?} in\n{info}"
        );
    }
    // --json is the same data for scripts, and dumpconfig gives the domain back with its uuid
    let j: serde_json::Value =
        serde_json::from_slice(&s.svctl(&["--json", "dominfo", "web"]).stdout).unwrap();
    assert_eq!(j["state"], "shut off");
    let dump: serde_json::Value =
        serde_json::from_slice(&s.svctl(&["dumpconfig", "web"]).stdout).unwrap();
    assert_eq!(dump["uuid"], j["uuid"]);
    assert_eq!(dump["disks"][0]["format"], "qcow2");
    let blk = stdout(&s.svctl(&["domblklist", "web"]));
    assert!(
        blk.contains("vda") && blk.contains("/img/web.qcow2"),
        "{blk}"
    );
    // redefining keeps the uuid
    s.svctl(&["define", &file]);
    let again: serde_json::Value =
        serde_json::from_slice(&s.svctl(&["dumpconfig", "web"]).stdout).unwrap();
    assert_eq!(again["uuid"], j["uuid"]);
    assert!(s.svctl(&["undefine", "web"]).status.success());
    fails_with(&s.svctl(&["dominfo", "web"]), "no domain named 'web'");
}

#[test]
fn malformed_or_invalid_domain_files_are_refused_with_the_reason() {
    let s = Store::new("malformed");
    let bad = s.file("bad.json", r#"{"name": "x", "memory": "#);
    fails_with(&s.svctl(&["define", &bad]), "malformed domain file");
    let unknown = s.domain("x", r#", "colour": "blue""#);
    fails_with(&s.svctl(&["define", &unknown]), "unknown field `colour`");
    let size = s.file(
        "size.json",
        r#"{"name": "x", "memory": "lots", "kernel": "/k"}"#,
    );
    fails_with(&s.svctl(&["define", &size]), "invalid size \"lots\"");
    let small = s.file(
        "small.json",
        r#"{"name": "x", "memory": "16M", "kernel": "/k"}"#,
    );
    fails_with(&s.svctl(&["define", &small]), "below the minimum");
    let name = s.file(
        "name.json",
        r#"{"name": "../etc", "memory": "1G", "kernel": "/k"}"#,
    );
    fails_with(&s.svctl(&["define", &name]), "invalid domain name");
    let nic = s.domain("x", r#", "nics": [{}]"#);
    fails_with(&s.svctl(&["define", &nic]), "exactly one of bridge or tap");
    fails_with(
        &s.svctl(&["define", "/nonexistent.json"]),
        "cannot read /nonexistent.json",
    );
    assert!(!stdout(&s.svctl(&["list", "--all"])).contains(" x "));
}

#[test]
fn setmem_above_the_maximum_and_verbs_that_need_a_running_domain() {
    let s = Store::new("stopped");
    s.svctl(&["define", &s.domain("db", "")]);
    fails_with(
        &s.svctl(&["setmem", "db", "2G"]),
        "above its maximum memory (512M)",
    );
    fails_with(&s.svctl(&["setmem", "db", "12Q"]), "invalid size");
    for verb in [
        "console",
        "suspend",
        "resume",
        "shutdown",
        "destroy",
        "dommemstat",
    ] {
        fails_with(&s.svctl(&[verb, "db"]), "domain 'db' is not running");
    }
    fails_with(
        &s.svctl(&["setmem", "db", "256M"]),
        "domain 'db' is not running",
    );
    fails_with(&s.svctl(&["dumpconfig", "db", "--vmm"]), "not running");
}

#[test]
fn start_names_the_missing_file() {
    let s = Store::new("missing");
    let file = s.domain("vm", r#", "disks": [{"path": "/nonexistent/disk.img"}]"#);
    s.svctl(&["define", &file]);
    fails_with(
        &s.svctl(&["start", "vm"]),
        "disk /nonexistent/disk.img does not exist",
    );
    let nokernel = s.file(
        "k.json",
        r#"{"name": "vm2", "memory": "1G", "kernel": "/nonexistent/vmlinuz"}"#,
    );
    s.svctl(&["define", &nokernel]);
    fails_with(
        &s.svctl(&["start", "vm2"]),
        "kernel /nonexistent/vmlinuz does not exist",
    );
    assert!(stdout(&s.svctl(&["list", "--all"])).contains("shut off"));
}

#[test]
fn setvcpus_autostart_and_install_options() {
    let s = Store::new("config");
    s.svctl(&["define", &s.domain("app", "")]);
    fails_with(&s.svctl(&["setvcpus", "app", "4"]), "use --config");
    fails_with(
        &s.svctl(&["setvcpus", "app", "0", "--config"]),
        "out of range",
    );
    assert!(s
        .svctl(&["setvcpus", "app", "4", "--config"])
        .status
        .success());
    assert!(s.svctl(&["autostart", "app"]).status.success());
    let info = stdout(&s.svctl(&["dominfo", "app"]));
    assert!(
        info.lines()
            .any(|l| l.starts_with("CPU(s):") && l.ends_with(" 4")),
        "{info}"
    );
    assert!(
        info.lines()
            .any(|l| l.starts_with("Autostart:") && l.ends_with("enable")),
        "{info}"
    );
    assert!(s.svctl(&["autostart", "app", "--disable"]).status.success());
    let kernel = s.file("k", "");
    let install = |extra: &[&str]| {
        let mut a = vec!["install", "--name", "inst", "--kernel", &kernel];
        a.extend_from_slice(extra);
        s.svctl(&a)
    };
    fails_with(&install(&["--memory", "big"]), "--memory: invalid size");
    fails_with(
        &install(&["--disk", "path=/x,colour=red"]),
        "unknown option colour",
    );
    fails_with(
        &install(&["--network", "wifi=yes"]),
        "expected bridge=BR or tap=TAP",
    );
    fails_with(
        &s.svctl(&["install", "--name", "app", "--kernel", &kernel]),
        "domain 'app' already exists",
    );
}

#[test]
fn the_store_is_plain_json_files() {
    let s = Store::new("files");
    s.svctl(&["define", &s.domain("plain", "")]);
    let path = Path::new(&s.dir).join("store/plain.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(d["name"], "plain");
    assert_eq!(d["memory"], "512M");
    assert_eq!(d["balloon"]["deflate_on_oom"], false);
}
