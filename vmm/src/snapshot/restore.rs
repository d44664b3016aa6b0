//! Reading a snapshot back (`splitvisor --restore DIR`): the state file is read and checked
//! whole before KVM is touched (magic, format version, every section's CRC and version, the
//! RAM file's size), then the VM is built as at a start ([`crate::vm::Vm::restore`]) with
//! each piece taken from here instead of from a boot: RAM from memory.bin, each device's
//! transport and rings, each vCPU, the interrupt controllers and the clock, the console.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::format::{FormatError, Sections};
use super::memory::{self, MemoryManifest};
use super::platform::{self, PlatformState};
use super::save::{CONFIG_VERSION, PCI_BUS_VERSION};
use super::vcpu_state::{self, VcpuState};
use crate::config::VmConfig;
use crate::devices::persist::SerialState;
use crate::memory::GuestRam;
use crate::virtio::pci::persist::VirtioPciState;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot read the snapshot's {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {dir}")]
    Format {
        dir: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("snapshot {dir}: section {section} cannot be read")]
    Decode {
        dir: PathBuf,
        section: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("snapshot {dir}: its memory.bin is {found} bytes, its RAM {want}")]
    MemorySize { dir: PathBuf, found: u64, want: u64 },
    #[error(transparent)]
    Memory(#[from] memory::MemoryImageError),
    #[error(transparent)]
    Platform(#[from] platform::PlatformError),
    #[error(transparent)]
    Vcpu(#[from] vcpu_state::VcpuStateError),
    #[error("device {device}: cannot be restored: {why}")]
    Device { device: String, why: String },
    #[error("the console cannot be restored: {0}")]
    Serial(String),
    #[error("this host's CPU lacks features the snapshot's guest was shown: {}", .0.join(", "))]
    CpuFeatures(Vec<String>),
    #[error("the source must be file:///DIRECTORY or a path, not {0:?}")]
    Url(String),
}

/// A snapshot, read and checked, being restored.
pub struct Restore {
    /// The snapshot's directory (or, for a migration, the stream it came on: for messages).
    dir: PathBuf,
    sections: Sections,
    manifest: MemoryManifest,
    /// A migration's RAM, already received (taken by the VM being built); `None` for a
    /// snapshot, whose RAM is in memory.bin.
    received_ram: std::sync::Mutex<Option<GuestRam>>,
    received: bool,
    /// Start with the vCPUs paused (`--paused`: `vm.resume` runs them).
    pub paused: bool,
}

/// `file:///DIR` or a plain path (also `source_url=file:///DIR`, Cloud Hypervisor's form).
pub fn dir_of_url(url: &str) -> Result<PathBuf, RestoreError> {
    let url = url.strip_prefix("source_url=").unwrap_or(url);
    super::save::dir_of_url(url).map_err(|_| RestoreError::Url(url.to_string()))
}

impl Restore {
    /// Read `dir`'s state file and check all of it (and memory.bin's size).
    pub fn open(dir: &Path, paused: bool) -> Result<Restore, RestoreError> {
        let state_path = dir.join("state.bin");
        let bytes = std::fs::read(&state_path).map_err(|source| RestoreError::Read {
            path: state_path.clone(),
            source,
        })?;
        let sections = Sections::read(&bytes).map_err(|source| RestoreError::Format {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut r = Restore {
            dir: dir.to_path_buf(),
            sections,
            manifest: MemoryManifest {
                size: 0,
                chunks: Vec::new(),
            },
            received_ram: std::sync::Mutex::new(None),
            received: false,
            paused,
        };
        r.manifest = r.section("memory", memory::VERSION)?;
        let mem = r.memory_file()?;
        let found = mem.metadata().map(|m| m.len()).unwrap_or(0);
        if found != r.manifest.size {
            return Err(RestoreError::MemorySize {
                dir: r.dir.clone(),
                found,
                want: r.manifest.size,
            });
        }
        r.check()?;
        Ok(r)
    }

    /// A migration's state (`sections`, from the stream `label`) with its RAM already in
    /// `ram`; the VM starts paused (the destination runs it once the source commits).
    pub fn received(label: &str, sections: &[u8], ram: GuestRam) -> Result<Restore, RestoreError> {
        let dir = PathBuf::from(label);
        let sections = Sections::read(sections).map_err(|source| RestoreError::Format {
            dir: dir.clone(),
            source,
        })?;
        let r = Restore {
            dir,
            sections,
            manifest: MemoryManifest {
                size: ram.size(),
                chunks: Vec::new(),
            },
            received_ram: std::sync::Mutex::new(Some(ram)),
            received: true,
            paused: true,
        };
        r.check()?;
        Ok(r)
    }

    /// Read every section now, so that a damaged one fails before KVM is touched.
    fn check(&self) -> Result<(), RestoreError> {
        let config = self.config()?;
        self.platform()?;
        self.serial()?;
        self.pci_latch()?;
        for id in 0..config.cpus {
            self.vcpu(id)?;
        }
        Ok(())
    }

    /// Whether this is a migration's state (the VM is held until the source commits).
    pub fn is_migration(&self) -> bool {
        self.received
    }

    /// A migration's RAM, for the VM being built (once).
    pub fn take_ram(&self) -> Option<GuestRam> {
        self.received_ram
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn section<T: DeserializeOwned>(&self, name: &str, version: u32) -> Result<T, RestoreError> {
        let body = self
            .sections
            .get(name, version)
            .map_err(|source| RestoreError::Format {
                dir: self.dir.clone(),
                source,
            })?;
        serde_json::from_slice(body).map_err(|source| RestoreError::Decode {
            dir: self.dir.clone(),
            section: name.to_string(),
            source,
        })
    }

    fn memory_file(&self) -> Result<File, RestoreError> {
        let path = self.dir.join("memory.bin");
        File::open(&path).map_err(|source| RestoreError::Read { path, source })
    }

    /// The VM's configuration as it was saved.
    pub fn config(&self) -> Result<VmConfig, RestoreError> {
        self.section("config", CONFIG_VERSION)
    }

    pub fn platform(&self) -> Result<PlatformState, RestoreError> {
        self.section("platform", platform::VERSION)
    }

    pub fn serial(&self) -> Result<SerialState, RestoreError> {
        self.section("serial", SerialState::VERSION)
    }

    pub fn vcpu(&self, id: u8) -> Result<VcpuState, RestoreError> {
        self.section(&format!("vcpu/{id}"), vcpu_state::VERSION)
    }

    pub fn device(&self, name: &str) -> Result<VirtioPciState, RestoreError> {
        self.section(&format!("device/{name}"), VirtioPciState::VERSION)
    }

    pub fn pci_latch(&self) -> Result<u32, RestoreError> {
        let body = self
            .sections
            .get("pci-bus", PCI_BUS_VERSION)
            .map_err(|source| RestoreError::Format {
                dir: self.dir.clone(),
                source,
            })?;
        let bytes: [u8; 4] = body.try_into().map_err(|_| RestoreError::Format {
            dir: self.dir.clone(),
            source: FormatError::Truncated("pci-bus".into()),
        })?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// Put the saved RAM into `ram` (fresh, all zeros); a migration's is there already.
    pub fn memory(&self, ram: &GuestRam) -> Result<(), RestoreError> {
        if self.received {
            return Ok(());
        }
        let image = self.memory_file()?;
        memory::restore(
            &self.manifest,
            &image,
            ram.memory(),
            ram.size(),
            ram.memfd(),
        )?;
        tracing::info!(
            chunks = self.manifest.chunks.len(),
            "guest RAM restored from the snapshot"
        );
        Ok(())
    }
}
