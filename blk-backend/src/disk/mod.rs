//! Disk images behind the device: what a format must provide, and opening one by name.

pub mod backing;
pub mod file_io;
pub mod probe_guard;
pub mod qcow2;
pub mod raw;

use std::io;
use std::path::{Path, PathBuf};

pub use file_io::GuestIovecs;

/// An image as the device sees it: a byte range of `capacity()` bytes.
pub trait Disk: Send + Sync {
    /// Size in bytes (a multiple of 512).
    fn capacity(&self) -> u64;
    /// Look at the image's size again (it may have been grown or shrunk under us, for an
    /// online resize); returns the new capacity.
    fn refresh_capacity(&self) -> io::Result<u64> {
        Ok(self.capacity())
    }
    /// Grow the image to `new_size` bytes while it is served (never shrink it); returns the
    /// new capacity.
    fn grow(&self, new_size: u64) -> io::Result<u64> {
        let _ = new_size;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this image cannot grow while it is served",
        ))
    }
    /// Fill `bufs` from `offset`.
    fn read_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()>;
    /// Store `bufs` at `offset`.
    fn write_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()>;
    /// Make everything written so far stable.
    fn flush(&self) -> io::Result<()>;
    /// Drop the data of a range (reads back as zeroes).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Make a range read as zeroes; `unmap` allows deallocating it.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// The file whose bytes are the disk's bytes at the same offsets (raw images), for
    /// asynchronous I/O straight on it; `None` when offsets need translating.
    fn identity_file(&self) -> Option<&std::fs::File> {
        None
    }
    /// Whether a write at `offset` must go through [`Disk::write_at`] (the disk checks what
    /// it writes there) rather than straight to [`Disk::identity_file`].
    fn checks_writes_at(&self, _offset: u64) -> bool {
        false
    }
    /// The qcow2 image behind the disk, for what only qcow2 has (internal snapshots).
    fn qcow2(&self) -> Option<&qcow2::Qcow2Disk> {
        None
    }
    /// Clean shutdown: flush, and leave the image as tidy as a clean close should.
    fn close(&self) -> io::Result<()> {
        self.flush()
    }
}

/// Image formats we open (`auto`: detected from the file's header); part of the backend's
/// configuration.
pub use api::backend::blk::ImageFormat as Format;

/// How to open the image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub readonly: bool,
    /// O_DIRECT: bypass the host page cache.
    pub direct: bool,
    pub format: Format,
    /// Directories backing files may come from (`--backing-dir`); empty: the image's own
    /// directory (see `backing.rs`).
    pub backing_dirs: Vec<PathBuf>,
}

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the image {0} is empty or smaller than one 512-byte sector")]
    TooSmall(PathBuf),
    #[error("{path} is not a qcow2 image (no qcow2 magic)")]
    NotQcow2 { path: PathBuf },
    #[error("cannot use the backing directory {path}")]
    BackingDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot serve the qcow2 image {path}")]
    Qcow2 {
        path: PathBuf,
        #[source]
        source: qcow2::Qcow2Error,
    },
}

/// Open the image at `path`. A writable image probed as raw refuses writes that would make
/// it probe as another format (`probe_guard.rs`); backing files follow `backing.rs`'s rules.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn Disk>, OpenError> {
    open_at_depth(path, &with_allowed_dirs(path, opts)?, 0)
}

/// Open a qcow2 image by itself, for work on its internal snapshots while no guest uses it
/// (`svctl snapshot-revert` on a stopped domain); its backing chain follows the same rules as
/// when it is served.
pub fn open_qcow2(path: &Path, opts: &OpenOptions) -> Result<qcow2::Qcow2Disk, OpenError> {
    let opts = with_allowed_dirs(path, opts)?;
    if !detect_qcow2(path)? {
        return Err(OpenError::NotQcow2 {
            path: path.to_path_buf(),
        });
    }
    open_qcow2_at(path, &opts, 0)
}

/// Open the new overlay at `path` over `backing`, the disk it reads through to (already open:
/// `reopen.rs`).
pub fn open_qcow2_over(
    path: &Path,
    opts: &OpenOptions,
    backing: Box<dyn Disk>,
) -> Result<qcow2::Qcow2Disk, OpenError> {
    let file = raw::open_file(path, opts)?;
    qcow2::Qcow2Disk::open_over(file, path, opts, backing).map_err(|source| OpenError::Qcow2 {
        path: path.to_path_buf(),
        source,
    })
}

fn open_qcow2_at(
    path: &Path,
    opts: &OpenOptions,
    depth: u32,
) -> Result<qcow2::Qcow2Disk, OpenError> {
    let file = raw::open_file(path, opts)?;
    qcow2::Qcow2Disk::open(file, path, opts, depth).map_err(|source| OpenError::Qcow2 {
        path: path.to_path_buf(),
        source,
    })
}

/// `opts` with the backing directories resolved (`backing.rs`).
fn with_allowed_dirs(path: &Path, opts: &OpenOptions) -> Result<OpenOptions, OpenError> {
    let dirs = backing::allowed_dirs(path, &opts.backing_dirs).map_err(|source| {
        OpenError::BackingDir {
            path: opts
                .backing_dirs
                .iter()
                .find(|d| d.canonicalize().is_err())
                .cloned()
                .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf()),
            source,
        }
    })?;
    Ok(OpenOptions {
        backing_dirs: dirs,
        ..opts.clone()
    })
}

/// Open an image that is `depth` levels down a backing chain.
pub fn open_at_depth(
    path: &Path,
    opts: &OpenOptions,
    depth: u32,
) -> Result<Box<dyn Disk>, OpenError> {
    let is_qcow2 = detect_qcow2(path)?;
    let format = match opts.format {
        Format::Auto if is_qcow2 => Format::Qcow2,
        Format::Auto => Format::Raw,
        f => f,
    };
    match format {
        Format::Qcow2 if !is_qcow2 => Err(OpenError::NotQcow2 {
            path: path.to_path_buf(),
        }),
        Format::Qcow2 => Ok(Box::new(open_qcow2_at(path, opts, depth)?)),
        _ if opts.format == Format::Auto && !opts.readonly => Ok(Box::new(
            probe_guard::FirstSectorGuard::new(raw::RawDisk::open(path, opts)?),
        )),
        _ => Ok(Box::new(raw::RawDisk::open(path, opts)?)),
    }
}

/// Whether the file starts with the qcow2 magic (read without O_DIRECT, whatever the options).
fn detect_qcow2(path: &Path) -> Result<bool, OpenError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|source| OpenError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file.read_exact(&mut magic).is_ok() && probe_guard::probes_as_another_format(&magic))
}
