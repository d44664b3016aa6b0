//! The system calls behind image I/O: vectored positional reads and writes straight between
//! the image file and guest memory, and `fallocate` for discard and write-zeroes. The only
//! `unsafe` of the block device's data path lives here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::VolatileSlice;

/// At most this many iovecs per system call (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Guest buffers for one request, as iovecs for the kernel. Holds the slices, so the memory
/// they point into stays mapped while the iovecs are in use.
pub struct GuestIovecs<'a> {
    slices: Vec<VolatileSlice<'a>>,
}

impl<'a> GuestIovecs<'a> {
    /// A plain host buffer seen as guest buffers (for metadata and copy-on-write data).
    pub fn from_buf(buf: &'a mut [u8]) -> GuestIovecs<'a> {
        GuestIovecs {
            slices: vec![VolatileSlice::from(buf)],
        }
    }

    pub fn new(slices: Vec<VolatileSlice<'a>>) -> Self {
        GuestIovecs { slices }
    }

    pub fn len(&self) -> usize {
        self.slices.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn slices(&self) -> &[VolatileSlice<'a>] {
        &self.slices
    }

    /// The bytes `offset .. offset + len` of these buffers.
    pub fn sub(&self, mut offset: usize, mut len: usize) -> GuestIovecs<'a> {
        let mut out = Vec::new();
        for s in &self.slices {
            if len == 0 {
                break;
            }
            if offset >= s.len() {
                offset -= s.len();
                continue;
            }
            let n = (s.len() - offset).min(len);
            if let Ok(part) = s.subslice(offset, n) {
                out.push(part);
            }
            len -= n;
            offset = 0;
        }
        GuestIovecs { slices: out }
    }

    /// Fill the buffers with zeroes.
    pub fn fill_zero(&self) {
        const ZEROES: [u8; 4096] = [0; 4096];
        for s in &self.slices {
            let mut at = 0;
            while at < s.len() {
                let n = (s.len() - at).min(ZEROES.len());
                if let Ok(part) = s.subslice(at, n) {
                    part.copy_from(&ZEROES[..n]);
                }
                at += n;
            }
        }
    }

    /// Copy `data` into the buffers (as much as fits).
    pub fn copy_from(&self, mut data: &[u8]) {
        for s in &self.slices {
            let n = s.len().min(data.len());
            s.copy_from(&data[..n]);
            data = &data[n..];
        }
    }

    /// Copy the buffers' bytes into `out` (as much as fits).
    pub fn copy_to(&self, mut out: &mut [u8]) {
        for s in &self.slices {
            let n = s.len().min(out.len());
            let (head, rest) = out.split_at_mut(n);
            s.copy_to(head);
            out = rest;
        }
    }

    /// The iovecs covering the buffers from byte `skip` on.
    fn iovecs_from(&self, mut skip: usize) -> Vec<libc::iovec> {
        let mut out = Vec::with_capacity(self.slices.len());
        for s in &self.slices {
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            out.push(libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().wrapping_add(skip).cast(),
                iov_len: s.len() - skip,
            });
            skip = 0;
        }
        out
    }
}

/// Read exactly `bufs.len()` bytes at `offset` into the guest buffers.
pub fn read_exact_at(file: &File, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
    transfer(file, bufs, offset, Direction::Read)
}

/// Write all of the guest buffers at `offset`.
pub fn write_all_at(file: &File, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
    transfer(file, bufs, offset, Direction::Write)
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

fn transfer(file: &File, bufs: &GuestIovecs, offset: u64, dir: Direction) -> io::Result<()> {
    let total = bufs.len();
    let mut done = 0usize;
    while done < total {
        let iov = bufs.iovecs_from(done);
        let count = iov.len().min(IOV_MAX) as libc::c_int;
        let pos = offset
            .checked_add(done as u64)
            .and_then(|p| libc::off_t::try_from(p).ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: every iovec points into guest memory that `bufs` keeps mapped, with the
        // length of its slice (minus what was already transferred); the kernel reads or writes
        // only inside those ranges. The file descriptor is open for the life of `file`.
        let n = unsafe {
            match dir {
                Direction::Read => libc::preadv(file.as_raw_fd(), iov.as_ptr(), count, pos),
                Direction::Write => libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count, pos),
            }
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image ended before the request's range",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Deallocate `len` bytes at `offset` (they read back as zeroes); the file keeps its size.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// Make `len` bytes at `offset` read as zeroes, keeping them allocated.
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: fallocate only changes the file's allocation; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
