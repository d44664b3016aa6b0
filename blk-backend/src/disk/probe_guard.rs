//! QEMU's rule for images whose format was probed as raw: the guest may not write a first
//! sector that would make the next probe see another format. Without it a guest writes a
//! qcow2 header naming a host file into its own raw disk and reads that file from its next
//! start (QEMU's CVE-2008-2004).
//!
//! A write that covers the format magic has its first 4 KiB copied out of guest memory into a
//! buffer aligned for O_DIRECT, checked there, and written from the copy: the guest cannot
//! change the bytes between the check and the write. The device sends those writes through [`Disk::write_at`] rather
//! than io_uring (see [`Disk::checks_writes_at`]); everything else goes straight to the file.

use std::fs::File;
use std::io;

use super::file_io::GuestIovecs;
use super::{qcow2, raw::RawDisk, Disk};

/// The first block's size, and the alignment O_DIRECT may ask of a buffer (4 KiB logical
/// blocks).
const ALIGN: usize = 4096;

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

    fn grow(&self, new_size: u64) -> io::Result<u64> {
        self.inner.grow(new_size)
    }

    fn read_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
        self.inner.read_at(bufs, offset)
    }

    fn write_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
        if !self.checks_writes_at(offset) {
            return self.inner.write_at(bufs, offset);
        }
        // offsets are whole sectors: this write starts at 0. Its first block is copied into
        // an aligned buffer, checked and written from there; the rest goes straight from
        // guest memory, as any write (block-sized pieces keep O_DIRECT's alignment)
        let len = bufs.len();
        let head_len = len.min(ALIGN);
        let mut storage = vec![0u8; head_len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN).min(ALIGN);
        let head = &mut storage[start..start + head_len];
        bufs.sub(0, head_len).copy_to(head);
        if probes_as_another_format(head) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "refused: the write would turn the first sector of an image probed as raw \
                 into another format's header (give --format raw to allow it)",
            ));
        }
        self.inner.write_at(&GuestIovecs::from_buf(head), 0)?;
        if len > head_len {
            self.inner
                .write_at(&bufs.sub(head_len, len - head_len), head_len as u64)?;
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
