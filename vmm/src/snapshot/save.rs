//! Taking a snapshot of the running VM into a directory (`vm.snapshot`):
//!
//! ```text
//! DIR/config.json  the VM's configuration (its devices' sockets: where restore reconnects)
//! DIR/state.bin    the sections (format.rs): config, platform, vcpu/N, serial, pci-bus,
//!                  device/NAME (the virtio-pci transport and what the vmm knows of the
//!                  vhost-user device), memory (memory.bin's chunk list)
//! DIR/memory.bin   guest RAM, sparse (memory.rs)
//! ```
//!
//! The order: pause the vCPUs (the clock freezes); stop every device's rings (the backends
//! finish what is in flight, so guest memory is still from here on — and the interrupts
//! that finishing raises are in the interrupt controllers read next); read each vCPU in its
//! own thread, after finishing the instruction it was in; read the platform, the devices
//! and the RAM; write everything into `DIR.tmp-PID`, flushed, renamed to `DIR` at the end
//! (a failure leaves no half-written `DIR`). Then the rings start again where they stopped,
//! and the VM runs on if it was running.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VmFd;

use super::caps::KvmCaps;
use super::format::Sections;
use super::{memory, platform, vcpu_state};
use crate::config::VmConfig;
use crate::devices::Devices;
use crate::run_control::{RunControl, RunError};
use crate::virtio::pci::VirtioPciDevice;

/// The section versions of what has no versioned type of its own.
pub const CONFIG_VERSION: u32 = 1;
pub const PCI_BUS_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("device {device}: {why}")]
    Device { device: String, why: String },
    #[error("{0}")]
    Vcpu(String),
    #[error(transparent)]
    Platform(#[from] platform::PlatformError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryImageError),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} exists and is not empty: a snapshot is never written over another")]
    Exists(PathBuf),
    #[error("the destination must be file:///DIRECTORY or a path, not {0:?}")]
    Url(String),
    #[error("cannot encode the state")]
    Encode(#[from] serde_json::Error),
}

/// What taking a snapshot needs of the VM.
pub struct Handles {
    pub vm: Arc<VmFd>,
    pub caps: KvmCaps,
    pub memfd: File,
    pub ram_size: u64,
    pub control: Arc<RunControl>,
    pub devices: Arc<Devices>,
    pub transports: Vec<(String, Arc<Mutex<VirtioPciDevice>>)>,
    pub cfg: VmConfig,
    /// For a migration: the vhost-user connections (handed over to the destination), the KVM
    /// slots of guest RAM (for the dirty log), its pages, and how the VM ends.
    pub vhost: Vec<Arc<Mutex<crate::vhost_user::VhostUserDevice>>>,
    pub regions: Vec<(u32, u64, u64, u64)>,
    pub ram_pages: api::types::RamPages,
    pub exit: Arc<crate::exit::ExitHandle>,
    pub progress: Arc<crate::migration::Progress>,
}

/// What a snapshot took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    pub dir: PathBuf,
    /// Guest RAM bytes written (the rest are holes).
    pub ram_bytes: u64,
    pub millis: u64,
}

/// `file:///DIR` (Cloud Hypervisor's form) or a plain path.
pub fn dir_of_url(url: &str) -> Result<PathBuf, SnapshotError> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if !path.starts_with('/') || url.contains("://") && !url.starts_with("file://") {
        return Err(SnapshotError::Url(url.to_string()));
    }
    Ok(PathBuf::from(path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn lock(t: &Mutex<VirtioPciDevice>) -> std::sync::MutexGuard<'_, VirtioPciDevice> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Snapshot the VM into `dir` (which must not exist, or be empty).
pub fn save(h: &Handles, dir: &Path) -> Result<SaveReport, SnapshotError> {
    let t0 = Instant::now();
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(SnapshotError::Exists(dir.to_path_buf()));
    }
    h.control.begin_snapshot()?;
    let result = save_exclusive(h, dir);
    h.control.end_snapshot();
    let ram_bytes = result?;
    let report = SaveReport {
        dir: dir.to_path_buf(),
        ram_bytes,
        millis: t0.elapsed().as_millis() as u64,
    };
    tracing::info!(?report, "snapshot taken");
    Ok(report)
}

/// [`save`] while no pause, resume or other snapshot can run.
fn save_exclusive(h: &Handles, dir: &Path) -> Result<u64, SnapshotError> {
    let was_running = !h.control.paused();
    if was_running {
        h.control.pause_for_snapshot()?;
    }
    let result = suspend_devices(h).and_then(|suspended| {
        let written = write_snapshot(h, dir);
        resume_devices(h, suspended);
        written
    });
    if was_running {
        h.control.resume_after_snapshot()?;
    }
    result
}

/// Stop every device's rings; on a failure, start again those already stopped.
pub fn suspend_devices(h: &Handles) -> Result<usize, SnapshotError> {
    for (i, (name, t)) in h.transports.iter().enumerate() {
        if let Err(why) = lock(t).suspend_device() {
            resume_devices(h, i);
            return Err(SnapshotError::Device {
                device: name.clone(),
                why,
            });
        }
    }
    Ok(h.transports.len())
}

/// Start again the rings of the first `count` devices.
pub fn resume_devices(h: &Handles, count: usize) {
    for (name, t) in h.transports.iter().take(count) {
        if let Err(e) = lock(t).resume_device() {
            tracing::error!(device = %name, "cannot start the rings again after the snapshot: {e}");
        }
    }
}

/// Read everything (the VM paused, its devices stopped) and write the directory; the guest
/// RAM bytes written.
fn write_snapshot(h: &Handles, dir: &Path) -> Result<u64, SnapshotError> {
    let mut sections = capture(h)?;
    let config = serde_json::to_vec_pretty(&h.cfg)?;

    // a fresh directory of ours beside DIR (never one that exists: a link or another's
    // directory there is refused, not followed)
    let tmp = dir.with_file_name(format!(
        ".{}.tmp-{}-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        platform::unix_ns()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io(&tmp))?;
    let written = (|| {
        let mem_path = tmp.join("memory.bin");
        let mem = create_new(&mem_path)?;
        let mut last = 0;
        let size = h.ram_size;
        let manifest = memory::save(&h.memfd, size, &mem, &mut |at| {
            let tenth = at * 10 / size.max(1);
            if tenth > last {
                last = tenth;
                tracing::info!("snapshot: guest RAM {}% written", tenth * 10);
            }
        })?;
        mem.sync_all().map_err(io(&mem_path))?;
        let ram_bytes = manifest.chunks.iter().map(|c| c.len).sum();
        sections.put("memory", memory::VERSION, serde_json::to_vec(&manifest)?);
        write_file(&tmp.join("config.json"), &config)?;
        write_file(&tmp.join("state.bin"), &sections.to_bytes())?;
        File::open(&tmp)
            .and_then(|d| d.sync_all())
            .map_err(io(&tmp))?;
        let _ = std::fs::remove_dir(dir); // an empty one (checked above)
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        // the new name on disk too: `svctl save` stops the VM right after
        if let Some(parent) = dir.parent() {
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(ram_bytes)
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// Everything but guest RAM, as sections (the VM paused, its devices stopped): each vCPU,
/// the platform, the console, the PCI latch, each device, the configuration. A migration
/// sends the same.
pub fn capture(h: &Handles) -> Result<Sections, SnapshotError> {
    let mut sections = Sections::new();
    let (caps, devices) = (h.caps.clone(), h.devices.clone());
    let vcpus = h.control.run_on_parked(move |id, vcpu| {
        vcpu_state::finish_pending_io(id, vcpu, &caps, &mut |exit| {
            devices.io_exit(exit);
        })
        .and_then(|()| vcpu_state::capture(id, vcpu, &caps))
        .map_err(|e| crate::error_chain(&e))
        .and_then(|s| serde_json::to_vec(&s).map_err(|e| e.to_string()))
    })?;
    if vcpus.len() != usize::from(h.cfg.cpus) {
        return Err(SnapshotError::Vcpu(format!(
            "{} of the VM's {} vCPUs answered (is it still starting?)",
            vcpus.len(),
            h.cfg.cpus
        )));
    }
    for (id, state) in vcpus.into_iter().enumerate() {
        let state = state.map_err(SnapshotError::Vcpu)?;
        sections.put(&format!("vcpu/{id}"), vcpu_state::VERSION, state);
    }
    // the clock as the pause froze it, and when: a restore moves it on by the real time
    // since then
    let (clock, frozen_at) = match h.control.paused_clock() {
        Some(c) => c,
        None => (
            h.vm.get_clock()
                .map_err(|e| SnapshotError::Vcpu(e.to_string()))?,
            platform::unix_ns(),
        ),
    };
    let platform = platform::capture(&h.vm, clock, frozen_at)?;
    sections.put(
        "platform",
        platform::VERSION,
        serde_json::to_vec(&platform)?,
    );
    let serial = h.devices.serial.state();
    sections.put("serial", serial.version, serde_json::to_vec(&serial)?);
    let latch = h.devices.pci.config_address();
    sections.put("pci-bus", PCI_BUS_VERSION, latch.to_le_bytes().to_vec());
    for (name, t) in &h.transports {
        let state = lock(t).state();
        sections.put(
            &format!("device/{name}"),
            state.version,
            serde_json::to_vec(&state)?,
        );
    }
    sections.put("config", CONFIG_VERSION, serde_json::to_vec_pretty(&h.cfg)?);
    Ok(sections)
}

/// A new file (never an existing one, nor through a link).
fn create_new(path: &Path) -> Result<File, SnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    use std::io::Write;
    let mut f = create_new(path)?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}
