//! QEMU's rule for images whose format was probed as raw: the guest may not write a first
//! sector that would make the next probe see another format. Without it a guest writes a
//! qcow2 header naming a host file into its own raw disk and reads that file from its next
//! start (QEMU's CVE-2008-2004).
//!
//! Writes that cover the format magic are copied out of guest memory first and checked on
//! the copy, which is then what reaches the file: the guest cannot change the bytes between
//! the check and the write. The device sends those writes through [`Disk::write_at`] rather
//! than io_uring (see [`Disk::checks_writes_at`]); everything else goes straight to the file.

use std::fs::File;
use std::io;

use super::file_io::GuestIovecs;
use super::{qcow2, raw::RawDisk, Disk};

/// One sector, aligned for O_DIRECT.
#[repr(C, align(4096))]
struct Sector([u8; 512]);

/// A raw disk whose format was probed.
pub struct FirstSectorGuard {
    inner: RawDisk,
}

impl FirstSectorGuard {
    pub fn new(inner: RawDisk) -> Self {
        FirstSectorGuard { inner }
    }
}

/// Whether `head` (the image's first bytes) would be probed as a format other than raw.
pub fn probes_as_another_format(head: &[u8]) -> bool {
    head.starts_with(&qcow2::MAGIC)
}

impl Disk for FirstSectorGuard {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }

    fn refresh_capacity(&self) -> io::Result<u64> {
        self.inner.refresh_capacity()
    }

    fn read_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
        self.inner.read_at(bufs, offset)
    }

    fn write_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
        if !self.checks_writes_at(offset) {
            return self.inner.write_at(bufs, offset);
        }
        // offsets are whole sectors: this write starts at 0
        let mut head = Box::new(Sector([0; 512]));
        let n = bufs.len().min(head.0.len());
        bufs.sub(0, n).copy_to(&mut head.0[..n]);
        if probes_as_another_format(&head.0[..n]) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "refused: the write would turn the first sector of an image probed as raw \
                 into another format's header (give --format raw to allow it)",
            ));
        }
        self.inner
            .write_at(&GuestIovecs::from_buf(&mut head.0[..n]), 0)?;
        if bufs.len() > n {
            self.inner
                .write_at(&bufs.sub(n, bufs.len() - n), n as u64)?;
        }
        Ok(())
    }

    fn checks_writes_at(&self, offset: u64) -> bool {
        offset < qcow2::MAGIC.len() as u64
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        // zeroes never look like a format's magic
        self.inner.write_zeroes(offset, len, unmap)
    }

    fn identity_file(&self) -> Option<&File> {
        self.inner.identity_file()
    }
}
