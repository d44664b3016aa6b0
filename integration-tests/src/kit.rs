//! Where the guest kit built by `scripts/guest-kit.sh` lives.

use std::path::{Path, PathBuf};

use crate::sandbox::SandboxError;

/// The guest kit: kernels, initramfs images and test disks (see `scripts/guest-kit.sh`).
#[derive(Debug, Clone)]
pub struct Kit {
    root: PathBuf,
}

impl Kit {
    /// `$SPLITVISOR_CACHE/kit`, by default `~/.cache/splitvisor/kit`.
    pub fn locate() -> Result<Kit, SandboxError> {
        let cache = match std::env::var_os("SPLITVISOR_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                PathBuf::from(home).join(".cache/splitvisor")
            }
        };
        let root = cache.join("kit");
        if !root.join("MANIFEST").is_file() {
            return Err(SandboxError::NoKit(root));
        }
        Ok(Kit { root })
    }

    /// The kit's directory on this host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file of the kit, e.g. `l2/vmlinuz`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}
