//! The virsh verbs that need no running domain, as a real process against a throwaway
//! store: `edit` (a bad edit refused, the definition left byte for byte as it was), the
//! interactive shell fed a script on stdin, and domuuid/domid/domname/domstate.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::{fails_with, stderr, stdout, Store};

/// `svctl edit web` with an "editor" that runs `script` on the file (`$1`).
fn edit_with(s: &Store, script: &str) -> Output {
    let editor = s.file("editor.sh", &format!("#!/bin/sh\nset -e\n{script}\n"));
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    s.command(&["edit", "web"])
        .env_remove("VISUAL")
        .env("EDITOR", &editor)
        .output()
        .unwrap()
}

fn defined(s: &Store) -> String {
    std::fs::read_to_string(s.dir.join("store/web.json")).unwrap()
}

#[test]
fn a_bad_edit_is_refused_and_the_definition_left_as_it_was() {
    let s = Store::new("edit");
    let file = s.domain("web", r#", "vcpus": 2"#);
    assert!(s.svctl(&["define", &file]).status.success());
    let before = defined(&s);
    for (script, why) in [
        (
            r#"printf '{"name": "web", ' > "$1""#,
            "malformed domain file",
        ),
        (r#"sed -i 's/"vcpus": 2/"vcpus": 0/' "$1""#, "vcpus"),
        (
            r#"sed -i 's/"name": "web"/"name": "other"/' "$1""#,
            "the name cannot change",
        ),
        (
            r#"sed -i 's/"uuid": "[^"]*"/"uuid": "00000000-0000-4000-8000-000000000001"/' "$1""#,
            "the UUID cannot change",
        ),
        ("exit 3", "ended with exit status: 3"),
    ] {
        let o = edit_with(&s, script);
        fails_with(&o, why);
        if !why.contains("exit status") {
            assert!(stderr(&o).contains("the edit is refused"), "{}", stderr(&o));
            assert!(stderr(&o).contains("the edit is kept in"), "{}", stderr(&o));
        }
        assert_eq!(defined(&s), before, "after {script}");
    }
    // nothing changed: said so
    let o = edit_with(&s, "true");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("definition not changed"),
        "{}",
        stdout(&o)
    );
    // a good edit is saved
    let o = edit_with(&s, r#"sed -i 's/"vcpus": 2/"vcpus": 4/' "$1""#);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Domain 'web' definition edited"),
        "{}",
        stdout(&o)
    );
    let dump: serde_json::Value =
        serde_json::from_slice(&s.svctl(&["dumpconfig", "web"]).stdout).unwrap();
    assert_eq!(dump["vcpus"], 4);
}

#[test]
fn the_shell_runs_a_script_from_stdin_and_stops_at_quit() {
    let s = Store::new("shell");
    let file = s.domain("web", "");
    assert!(s.svctl(&["define", &file]).status.success());
    let script = "# a comment\nlist --all\ndominfo web\n\ndomstate 'web'\nbogus-verb\n\
                  dominfo ghost\nquit\nundefine web\n";
    let mut child = s
        .command(&[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        out.lines()
            .any(|l| l.contains("web") && l.contains("shut off")),
        "list: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("Persistent:") && l.ends_with("yes")),
        "dominfo: {out}"
    );
    assert!(out.lines().any(|l| l == "shut off"), "domstate: {out}");
    assert!(err.contains("bogus-verb"), "{err}");
    assert!(err.contains("no domain named 'ghost'"), "{err}");
    // a command failed: the script's status says so; and nothing ran after quit
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        s.svctl(&["dominfo", "web"]).status.success(),
        "undefine ran after quit"
    );
}

#[test]
fn a_domain_is_found_by_uuid_and_its_id_and_state_shown() {
    let s = Store::new("ident");
    let file = s.domain("web", "");
    assert!(s.svctl(&["define", &file]).status.success());
    let uuid = stdout(&s.svctl(&["domuuid", "web"])).trim().to_string();
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(stdout(&s.svctl(&["domname", &uuid])).trim(), "web");
    assert_eq!(
        stdout(&s.svctl(&["domname", &uuid.to_uppercase()])).trim(),
        "web"
    );
    assert_eq!(stdout(&s.svctl(&["domid", "web"])).trim(), "-");
    assert_eq!(stdout(&s.svctl(&["domstate", "web"])).trim(), "shut off");
    let j: serde_json::Value =
        serde_json::from_slice(&s.svctl(&["--json", "domstate", "web"]).stdout).unwrap();
    assert_eq!(j["state"], "shut off");
    fails_with(
        &s.svctl(&["domname", "12345"]),
        "no domain has the UUID or Id",
    );
    fails_with(&s.svctl(&["domuuid", "ghost"]), "no domain named 'ghost'");
}
