//! External snapshots: switch a served disk to a new qcow2 overlay whose backing file is the
//! image served until now (the control socket's `reopen`; libvirt's `--disk-only`). From the
//! switch on, guest writes go to the overlay and the old image stays as it was: the snapshot.
//!
//! The overlay reads the old image through the handle the backend already has (a confined
//! backend could not open it again by name), and is made in `--overlay-dir`, the one directory
//! Landlock lets the backend create files in. Requests in flight on io_uring are waited for
//! first, so none lands in the old image after the switch; the guest should be paused.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blk::BlkDevice;
use crate::disk::{self, qcow2, Disk, Format, GuestIovecs, OpenOptions};

/// How long a switch waits for requests in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Why a switch did not happen (the disk is served as before).
#[derive(Debug, thiserror::Error)]
pub enum ReopenError {
    #[error("the disk is served read-only")]
    ReadOnly,
    #[error("{0} must be an absolute path")]
    NotAbsolute(PathBuf),
    #[error("{path} is not in the overlay directory {dir} (--overlay-dir)")]
    OutsideOverlayDir { path: PathBuf, dir: PathBuf },
    #[error("{0} requests still in flight after {DRAIN_LIMIT:?}: pause the guest first")]
    Busy(usize),
    #[error("cannot make the overlay {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Open(#[from] disk::OpenError),
    #[error("cannot flush the current image")]
    Flush(#[source] io::Error),
}

/// What the switch changes besides the disk: the image the device serves.
pub struct Served {
    pub image: PathBuf,
    pub opts: OpenOptions,
    /// `--overlay-dir`, and the directory opened at start: overlays are made through it
    /// (`/proc/self/fd/N/NAME`), so the backend needs no right to walk the path to it once it
    /// runs as its own user.
    pub overlay_dir: Option<(PathBuf, std::fs::File)>,
}

/// Switch `device` to a new overlay at `overlay` over the image `served` names; `served`
/// then names the overlay.
pub fn reopen(device: &BlkDevice, served: &mut Served, overlay: &Path) -> Result<(), ReopenError> {
    if device.readonly {
        return Err(ReopenError::ReadOnly);
    }
    if !overlay.is_absolute() {
        return Err(ReopenError::NotAbsolute(overlay.to_path_buf()));
    }
    // where the file is really made: beneath the directory opened at start
    let made_at = match &served.overlay_dir {
        None => overlay.to_path_buf(),
        Some((dir, handle)) => {
            let name = overlay
                .file_name()
                .filter(|_| overlay.parent() == Some(dir.as_path()));
            let Some(name) = name else {
                return Err(ReopenError::OutsideOverlayDir {
                    path: overlay.to_path_buf(),
                    dir: dir.clone(),
                });
            };
            use std::os::fd::AsRawFd;
            Path::new("/proc/self/fd")
                .join(handle.as_raw_fd().to_string())
                .join(name)
        }
    };
    let start = Instant::now();
    loop {
        let n = device
            .io_in_flight
            .load(std::sync::atomic::Ordering::Acquire);
        if n == 0 {
            break;
        }
        if start.elapsed() > DRAIN_LIMIT {
            return Err(ReopenError::Busy(n));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let old = device.disk.get();
    old.flush().map_err(ReopenError::Flush)?;
    let format = if old.qcow2().is_some() {
        "qcow2"
    } else {
        "raw"
    };
    let base = std::path::absolute(&served.image).unwrap_or_else(|_| served.image.clone());
    let create_err = |source| ReopenError::Create {
        path: overlay.to_path_buf(),
        source,
    };
    let base_name = base.to_str().ok_or_else(|| {
        create_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the current image's path is not UTF-8",
        ))
    })?;
    qcow2::create_overlay(&made_at, base_name, format, old.capacity()).map_err(create_err)?;
    let opts = OpenOptions {
        format: Format::Qcow2,
        ..served.opts.clone()
    };
    let opened = disk::open_qcow2_over(&made_at, &opts, Box::new(Shared(old.clone())));
    let new = match opened {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&made_at);
            return Err(e.into());
        }
    };
    device.disk.replace(Box::new(new));
    // the old image is only read from now on: tidy it as a close does
    if let Err(e) = old.close() {
        tracing::warn!("closing {} after the switch: {e}", base.display());
    }
    tracing::info!(
        "disk switched to the overlay {} over {}",
        overlay.display(),
        base.display()
    );
    served.image = overlay.to_path_buf();
    Ok(())
}

/// The old image under its overlay: read through the shared handle, never written.
struct Shared(Arc<dyn Disk>);

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a backing image is never written",
    )
}

impl Disk for Shared {
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn read_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
        self.0.read_at(bufs, offset)
    }
    fn write_at(&self, _bufs: &GuestIovecs, _offset: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
}
