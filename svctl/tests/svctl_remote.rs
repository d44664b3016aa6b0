//! Remote mode (issue 29): `svctl -c ssh://root@127.0.0.1:PORT VERB` runs the verb with the
//! svctl of the other host — here a real sshd (Debian's openssh-server, scripts/install-deps.sh)
//! that the test starts on loopback with keys of its own, whose sessions get a store of their
//! own (sshd's `SetEnv`). What comes back is that store's domain, which the local store does not
//! have. Needs root (sshd logs in as root) and sshd; without them the tests fail saying so.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SSHD: &str = "/usr/sbin/sshd";

/// An sshd on 127.0.0.1 and the two stores: the "remote" one its sessions use, and ours.
struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("runs");
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Sshd {
    fn start(tag: &str) -> Sshd {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "the remote-mode test runs sshd: run it as root");
        assert!(
            Path::new(SSHD).exists(),
            "the remote-mode test needs {SSHD}: scripts/install-deps.sh installs openssh-server"
        );
        let dir = std::env::temp_dir().join(format!("svctl-remote-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        for key in ["host_key", "client_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key)));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).expect("keys");
        // sshd's privilege separation directory (the package makes it at boot, not here)
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let bin = Path::new(env!("CARGO_BIN_EXE_svctl"))
            .parent()
            .expect("bin dir");
        let d = dir.display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nSetEnv SVCTL_STORE={d}/remote-store SVCTL_RUNTIME={d}/remote-run \
             PATH={}:/usr/sbin:/usr/bin:/sbin:/bin\n",
            bin.display()
        );
        std::fs::write(dir.join("sshd_config"), config).expect("config");
        let log = std::fs::File::create(dir.join("sshd.log")).expect("log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd starts");
        let sshd = Sshd { child, dir, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd does not listen: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // a domain in the remote store only
        let kernel = sshd.dir.join("vmlinuz");
        std::fs::write(&kernel, "").expect("kernel");
        let file = sshd.dir.join("far.json");
        let domain =
            json!({"name": "far-away", "memory": "256M", "kernel": kernel, "balloon": null});
        std::fs::write(&file, domain.to_string()).expect("domain file");
        run(Command::new(env!("CARGO_BIN_EXE_svctl"))
            .arg("define")
            .arg(&file)
            .env("SVCTL_STORE", sshd.dir.join("remote-store"))
            .env("SVCTL_RUNTIME", sshd.dir.join("remote-run")));
        sshd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    fn uri(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }

    /// Our svctl, with our (empty) store, ssh told to use the test's key; `stdin` fed to it.
    fn svctl(&self, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
        let ssh = format!(
            "ssh -i {}/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=10",
            self.dir.display()
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_svctl"))
            .args(args)
            .env("SVCTL_SSH", ssh)
            .env("SVCTL_STORE", self.dir.join("local-store"))
            .env("SVCTL_RUNTIME", self.dir.join("local-run"))
            .env_remove("SVCTL_DEFAULT_URI")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("svctl runs");
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("stdin written");
        drop(input);
        child.wait_with_output().expect("svctl ends")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn list_runs_on_the_remote_host_and_shows_its_domains() {
    let s = Sshd::start("list");
    let out = s.svctl(&["-c", &s.uri(), "list", "--all"], &[], "");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}\nsshd: {}", s.log());
    assert!(
        stdout.contains("far-away") && stdout.contains("shut off"),
        "{stdout}"
    );
    let here = s.svctl(&["list", "--all"], &[], "");
    assert!(
        !text(&here.stdout).contains("far-away"),
        "the local store has no such domain"
    );
}

#[test]
fn the_default_uri_and_json_work_too() {
    let s = Sshd::start("json");
    let uri = s.uri();
    let out = s.svctl(
        &["--json", "dominfo", "far-away"],
        &[("SVCTL_DEFAULT_URI", &uri)],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["name"], "far-away", "{v}");
    assert_eq!(v["state"], "shut off", "{v}");
}

#[test]
fn the_interactive_shell_runs_remotely_from_a_script() {
    let s = Sshd::start("shell");
    let out = s.svctl(
        &["-c", &s.uri()],
        &[],
        "list --all\ndomstate far-away\nquit\n",
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("far-away") && stdout.contains("shut off"),
        "{stdout}"
    );
}

#[test]
fn remote_errors_and_exit_statuses_come_back() {
    let s = Sshd::start("errors");
    let out = s.svctl(&["-c", &s.uri(), "dominfo", "nothing"], &[], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no domain named 'nothing'"), "{stderr}");
    // an argument with spaces and quotes reaches the remote svctl as one word
    let out = s.svctl(&["-c", &s.uri(), "dominfo", "it's a vm"], &[], "");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(r#"invalid domain name "it's a vm""#),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_host_and_a_bad_uri_are_named() {
    let s = Sshd::start("unreachable");
    // nobody listens on port 1
    let out = s.svctl(&["-c", "ssh://root@127.0.0.1:1", "list"], &[], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot reach 127.0.0.1 over ssh"),
        "{stderr}"
    );
    let out = s.svctl(&["-c", "qemu:///system", "list"], &[], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("only ssh:// is known"));
}
