//! A test's own directory in the temporary directory, removed with everything in it on drop.

use std::path::{Path, PathBuf};

pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh, empty `sv-NAME-PID` (one left by an earlier run is removed first).
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
