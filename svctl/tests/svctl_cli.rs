//! `svctl`'s error cases and store handling, run as a real process against a throwaway store
//! (no VM needed: every case here fails, or succeeds, before any process is started). The
//! running-domain cases (start twice, console of a stopped domain after a shutdown…) are in
//! integration-tests/tests/svctl_lifecycle.rs, inside the sandbox.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails_with, stderr, stdout, Store};

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
        &["snapshot-list", "ghost"],
        &["snapshot-create-as", "ghost", "s"],
        &["snapshot-revert", "ghost", "s"],
        &["snapshot-delete", "ghost", "s"],
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
    // shut off: --live is refused, the default is the definition
    fails_with(
        &s.svctl(&["setvcpus", "app", "4", "--live"]),
        "is not running (use --config)",
    );
    fails_with(
        &s.svctl(&["setvcpus", "app", "0", "--config"]),
        "out of range",
    );
    assert!(s.svctl(&["setvcpus", "app", "2"]).status.success());
    // the maximum (vCPU hotplug's limit) is never below the count
    assert!(s
        .svctl(&["setvcpus", "app", "6", "--maximum", "--config"])
        .status
        .success());
    fails_with(
        &s.svctl(&["setvcpus", "app", "1", "--maximum", "--config"]),
        "a maximum of 1 is below its 2 vCPU(s)",
    );
    fails_with(
        &s.svctl(&["setvcpus", "app", "7", "--config"]),
        "vcpus 7 is out of range",
    );
    assert!(s
        .svctl(&["setvcpus", "app", "4", "--config"])
        .status
        .success());
    let def = stdout(&s.svctl(&["dumpconfig", "app"]));
    assert!(def.contains("\"max_vcpus\": 6"), "{def}");
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

/// The MAC `domiflist` shows for a domain's NIC `i`.
fn mac_of(s: &Store, name: &str, i: usize) -> String {
    let o = s.svctl(&["--json", "domiflist", name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    rows[i]["mac"].as_str().unwrap().to_string()
}

#[test]
fn a_uuid_that_is_not_one_is_refused_naming_the_domain_file() {
    let s = Store::new("uuid");
    // written by hand into the store: short, and not ASCII (slicing it used to panic)
    std::fs::create_dir_all(s.dir.join("store")).unwrap();
    for (name, uuid) in [("short", "abc"), ("accents", "éééééééééé")] {
        let path = s.dir.join(format!("store/{name}.json"));
        std::fs::write(
            &path,
            format!(
                r#"{{"name": "{name}", "uuid": "{uuid}", "memory": "512M", "kernel": "/k",
                    "nics": [{{"bridge": "br0"}}]}}"#
            ),
        )
        .unwrap();
        for verb in ["domiflist", "start", "dominfo"] {
            let o = s.svctl(&[verb, name]);
            fails_with(&o, &format!("{}: uuid", path.display()));
            fails_with(&o, "is not a UUID");
        }
    }
    // and at define, naming the file given
    let file = s.domain("x", r#", "uuid": "0123abcd-0000""#);
    fails_with(&s.svctl(&["define", &file]), &format!("{file}: uuid"));
    assert!(!s.dir.join("store/x.json").exists());
    // a UUID written another way is kept in its usual form
    let file = s.domain("y", r#", "uuid": "{0123ABCD-0000-4000-8000-000000000000}""#);
    let o = s.svctl(&["define", &file]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dump: serde_json::Value =
        serde_json::from_slice(&s.svctl(&["dumpconfig", "y"]).stdout).unwrap();
    assert_eq!(dump["uuid"], "0123abcd-0000-4000-8000-000000000000");
}

#[test]
fn generated_macs_take_40_bits_and_a_mac_twice_on_a_bridge_is_refused() {
    let s = Store::new("mac");
    let on = |name: &str, uuid: &str, nic: &str| {
        s.domain(name, &format!(r#", "uuid": "{uuid}", "nics": [{nic}]"#))
    };
    let a = on(
        "a",
        "0123abcd-ef00-4000-8000-000000000001",
        r#"{"bridge": "br0"}"#,
    );
    assert!(s.svctl(&["define", &a]).status.success());
    // the same first 16 bits of uuid, different further on: different MACs
    let b = on(
        "b",
        "0123abcd-1100-4000-8000-000000000002",
        r#"{"bridge": "br0"}"#,
    );
    let o = s.svctl(&["define", &b]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (mac_a, mac_b) = (mac_of(&s, "a", 0), mac_of(&s, "b", 0));
    assert_ne!(mac_a, mac_b);
    // locally administered, unicast
    let first = u8::from_str_radix(&mac_a[..2], 16).unwrap();
    assert_eq!(first & 0b11, 0b10, "{mac_a}");
    // the same first 40 bits: the same MAC, refused on the same bridge, fine on another
    let c = on(
        "c",
        "0123abcd-ef00-4000-8000-0000000000ff",
        r#"{"bridge": "br0"}"#,
    );
    let o = s.svctl(&["define", &c]);
    fails_with(&o, &format!("MAC {mac_a}"));
    fails_with(&o, "bridge br0");
    fails_with(&o, "domain 'c'");
    fails_with(&o, "domain 'a'");
    let c = on(
        "c",
        "0123abcd-ef00-4000-8000-0000000000ff",
        r#"{"bridge": "br1"}"#,
    );
    assert!(s.svctl(&["define", &c]).status.success());
    // an explicit MAC is kept as written, and checked the same way (in any case)
    let d = on(
        "d",
        "11111111-0000-4000-8000-000000000000",
        &format!(r#"{{"bridge": "br0", "mac": "{}"}}"#, mac_b.to_uppercase()),
    );
    fails_with(&s.svctl(&["define", &d]), "domain 'b'");
    let d = on(
        "d",
        "11111111-0000-4000-8000-000000000000",
        r#"{"bridge": "br0", "mac": "52:54:00:AB:CD:EF"}"#,
    );
    assert!(s.svctl(&["define", &d]).status.success());
    assert_eq!(mac_of(&s, "d", 0), "52:54:00:AB:CD:EF");
    // a store file edited by hand is checked at start (before the files it names)
    let path = s.dir.join("store/c.json");
    let kernel = s.dir.join("vmlinuz").display().to_string();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("br1", "br0")
        .replace(&kernel, "/nonexistent/vmlinuz");
    std::fs::write(&path, text).unwrap();
    fails_with(&s.svctl(&["start", "c"]), "domain 'a'");
    // and install checks before it defines anything
    let o = s.svctl(&[
        "install",
        "--name",
        "e",
        "--kernel",
        "/nonexistent/vmlinuz",
        "--network",
        &format!("bridge=br0,mac={mac_a}"),
    ]);
    fails_with(&o, "domain 'a'");
    assert!(!s.dir.join("store/e.json").exists());
}

/// `qemu-img` on `args` (the interop peer for the snapshot verbs); its stdout.
fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is needed (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "qemu-img {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// `qemu-img`'s view of the guest disk: its bytes from `offset`.
fn guest_bytes(s: &Store, image: &str, offset: usize, len: usize) -> Vec<u8> {
    let raw = s.dir.join("converted.raw");
    qemu_img(&["convert", "-O", "raw", image, raw.to_str().unwrap()]);
    std::fs::read(raw).unwrap()[offset..offset + len].to_vec()
}

#[test]
fn snapshots_of_a_shut_off_domain_are_qcow2_internal_snapshots_both_ways() {
    let s = Store::new("snapshots");
    let image = s.dir.join("disk.qcow2").display().to_string();
    let poke = |what: &str, offset: &str| {
        // qemu-img writes the guest's bytes: `dd` through a raw conversion would not
        let pattern = s.file("pattern", &what.repeat(512));
        let raw = s.dir.join("whole.raw").display().to_string();
        qemu_img(&["convert", "-O", "raw", &image, &raw]);
        let mut bytes = std::fs::read(&raw).unwrap();
        let at: usize = offset.parse().unwrap();
        bytes[at..at + 512].copy_from_slice(&std::fs::read(&pattern).unwrap()[..512]);
        std::fs::write(&raw, bytes).unwrap();
        // written back into the same image so its snapshots stay: qemu-img dd would do;
        // `convert -n` keeps the target image (and its snapshot table)
        qemu_img(&["convert", "-n", "-f", "raw", "-O", "qcow2", &raw, &image]);
    };
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "4M"]);
    let disk = format!(r#", "disks": [{{"path": "{image}", "format": "qcow2"}}]"#);
    let file = s.domain("snap", &disk);
    assert!(s.svctl(&["define", &file]).status.success());
    poke("A", "4096");
    let made = s.svctl(&["snapshot-create-as", "snap", "first"]);
    assert!(made.status.success(), "{}", stderr(&made));
    assert_eq!(stdout(&made), "Domain snapshot first created\n");
    fails_with(
        &s.svctl(&["snapshot-create-as", "snap", "first"]),
        "already has a snapshot 'first'",
    );
    fails_with(
        &s.svctl(&["snapshot-create-as", "snap", "../x"]),
        "invalid snapshot name",
    );
    poke("B", "4096");
    // one made by qemu-img: listed and reverted to as well (disks only)
    qemu_img(&["snapshot", "-c", "by-qemu", &image]);
    poke("C", "4096");
    let list = stdout(&s.svctl(&["snapshot-list", "snap"]));
    assert!(list.contains("Creation Time"), "{list}");
    let row = |n: &str| {
        list.lines()
            .find(|l| l.trim_start().starts_with(n))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        row("first").contains("shut off") && row("first").ends_with("no"),
        "{list}"
    );
    assert!(row("by-qemu").contains("disk-snapshot"), "{list}");
    let listed = qemu_img(&["snapshot", "-l", &image]);
    assert!(
        listed.contains("first") && listed.contains("by-qemu"),
        "{listed}"
    );
    let r = s.svctl(&["snapshot-revert", "snap", "first"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).contains("reverted to snapshot first (shut off)"));
    assert_eq!(guest_bytes(&s, &image, 4096, 512), b"A".repeat(512));
    let r = s.svctl(&["snapshot-revert", "snap", "by-qemu"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(guest_bytes(&s, &image, 4096, 512), b"B".repeat(512));
    let check = Command::new("qemu-img")
        .args(["check", &image])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stdout(&check));
    fails_with(
        &s.svctl(&["snapshot-revert", "snap", "nope"]),
        "has no snapshot 'nope'",
    );
    for snap in ["first", "by-qemu"] {
        let d = s.svctl(&["snapshot-delete", "snap", snap]);
        assert!(d.status.success(), "{}", stderr(&d));
    }
    assert!(!qemu_img(&["snapshot", "-l", &image]).contains("first"));
    let json = stdout(&s.svctl(&["--json", "snapshot-list", "snap"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["snapshots"], serde_json::json!([]), "{json}");
    // a raw disk cannot hold one
    let raw = s.file("raw.img", &"\0".repeat(1 << 20));
    let disk = format!(r#", "disks": [{{"path": "{raw}", "format": "raw"}}]"#);
    assert!(s
        .svctl(&["define", &s.domain("rawdom", &disk)])
        .status
        .success());
    fails_with(&s.svctl(&["snapshot-create-as", "rawdom", "x"]), "is raw");
}

#[test]
fn an_external_snapshot_of_a_shut_off_domain_moves_its_disks_onto_overlays() {
    let s = Store::new("external");
    let raw = s.dir.join("disk.raw");
    std::fs::write(&raw, b"R".repeat(1 << 20)).unwrap();
    let disk = format!(
        r#", "disks": [{{"path": "{}", "format": "raw"}}]"#,
        raw.display()
    );
    assert!(s
        .svctl(&["define", &s.domain("ext", &disk)])
        .status
        .success());
    let made = s.svctl(&["snapshot-create-as", "ext", "before", "--disk-only"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let overlay = s.dir.join("store/overlays/ext/vda-disk.before.qcow2");
    assert!(
        stdout(&made).contains(&format!("external: vda -> {}", overlay.display())),
        "{}",
        stdout(&made)
    );
    // the definition names the overlay, which reads through to the untouched raw image
    let def: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.dir.join("store/ext.json")).unwrap())
            .unwrap();
    assert_eq!(def["disks"][0]["path"], overlay.display().to_string());
    assert_eq!(def["disks"][0]["format"], "qcow2");
    assert_eq!(
        def["disks"][0]["backing_dirs"][0],
        s.dir.display().to_string()
    );
    let ov = overlay.display().to_string();
    let info = qemu_img(&["info", "--output=json", &ov]);
    assert!(
        info.contains(&format!("\"backing-filename\": \"{}\"", raw.display())),
        "{info}"
    );
    assert_eq!(guest_bytes(&s, &ov, 0, 512), b"R".repeat(512));
    let list = stdout(&s.svctl(&["snapshot-list", "ext"]));
    assert!(
        list.lines()
            .any(|l| l.trim_start().starts_with("before") && l.contains("disk-snapshot")),
        "{list}"
    );
    fails_with(
        &s.svctl(&["snapshot-revert", "ext", "before"]),
        "is external (--disk-only): reverting to it is not supported",
    );
    fails_with(
        &s.svctl(&["snapshot-create-as", "ext", "before", "--disk-only"]),
        "already has a snapshot 'before'",
    );
    let d = s.svctl(&["snapshot-delete", "ext", "before"]);
    assert!(d.status.success(), "{}", stderr(&d));
    assert!(overlay.exists(), "the disk runs on in its overlay");
}
