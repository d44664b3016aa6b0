//! Raw images: guest offset = file offset.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::file_io::{self, GuestIovecs};
use super::{Disk, OpenError, OpenOptions};

/// A raw image file.
pub struct RawDisk {
    file: File,
    capacity: AtomicU64,
}

impl RawDisk {
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<RawDisk, OpenError> {
        let err = |source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = open_file(path, opts)?;
        let capacity = size_of(&file).map_err(err)?;
        if capacity == 0 {
            return Err(OpenError::TooSmall(path.to_path_buf()));
        }
        Ok(RawDisk {
            file,
            capacity: AtomicU64::new(capacity),
        })
    }
}

/// The usable size of a file or block device, in whole sectors.
fn size_of(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    let len = if meta.file_type().is_file() {
        meta.len()
    } else {
        // a block device: its size is where the end is
        use std::io::Seek;
        (&*file).seek(io::SeekFrom::End(0))?
    };
    Ok(len & !511)
}

/// Open an image file with the options' access mode and caching.
pub fn open_file(path: &Path, opts: &OpenOptions) -> Result<File, OpenError> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(!opts.readonly);
    if opts.direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).map_err(|source| OpenError::Open {
        path: path.to_path_buf(),
        source,
    })
}

impl Disk for RawDisk {
    fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    fn refresh_capacity(&self) -> io::Result<u64> {
        let size = size_of(&self.file)?;
        if size == 0 {
            return Err(io::Error::other("the image shrank to nothing"));
        }
        self.capacity.store(size, Ordering::Relaxed);
        Ok(size)
    }

    fn grow(&self, new_size: u64) -> io::Result<u64> {
        let current = self.refresh_capacity()?;
        if !new_size.is_multiple_of(512) {
            let why = format!("the new size {new_size} is not a multiple of 512 bytes");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        if new_size < current {
            let why = format!(
                "the disk has {current} bytes; shrinking it to {new_size} is refused (data \
                 past the end would be lost)"
            );
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        if !self.file.metadata()?.file_type().is_file() {
            let why = "the image is a block device: grow it on the host, then send SIGUSR2";
            return Err(io::Error::new(io::ErrorKind::Unsupported, why));
        }
        // the file's new tail is a hole: it reads as zeroes and takes no space
        self.file.set_len(new_size)?;
        self.refresh_capacity()
    }

    fn read_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
        file_io::read_exact_at(&self.file, bufs, offset)
    }

    fn write_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
        file_io::write_all_at(&self.file, bufs, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn identity_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        file_io::punch_hole(&self.file, offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap && file_io::punch_hole(&self.file, offset, len).is_ok() {
            return Ok(());
        }
        if file_io::zero_range(&self.file, offset, len).is_ok() {
            return Ok(());
        }
        // file systems without ZERO_RANGE: write the zeroes
        let zeroes = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}
