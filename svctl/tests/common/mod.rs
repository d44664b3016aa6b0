//! What the svctl process tests share: a throwaway store, and svctl run against it.
#![allow(dead_code)] // each test file uses its share

use std::path::PathBuf;
use std::process::{Command, Output};

pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(tag: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("svctl-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Store { dir }
    }

    pub fn svctl(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// svctl with `args` against this store, to be given more (environment, stdin).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_svctl"));
        cmd.args(args)
            .env("SVCTL_STORE", self.dir.join("store"))
            .env("SVCTL_RUNTIME", self.dir.join("run"));
        cmd
    }

    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// A domain file whose kernel exists (an empty file: nothing here boots it).
    pub fn domain(&self, name: &str, extra: &str) -> String {
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

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn fails_with(o: &Output, msg: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    let err = stderr(o);
    assert!(
        err.starts_with("svctl: error: ") && err.contains(msg),
        "expected {msg:?} in {err:?}"
    );
}
