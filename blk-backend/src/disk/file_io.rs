//! The system calls behind image I/O: vectored positional reads and writes straight between
//! the image file and guest memory, and `fallocate` for discard and write-zeroes. The only
//! `unsafe` of the block device's data path lives here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

pub use backends::guest_iovecs::GuestIovecs;
use backends::guest_iovecs::IOV_MAX;

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
