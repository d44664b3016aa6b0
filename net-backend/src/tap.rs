//! The tap as the queues see it: the device itself comes from the `tap` crate (shared with
//! svctl, which makes taps for unprivileged backends); here, moving one packet between a tap
//! queue and guest memory.

use std::io;
use std::os::fd::RawFd;

use backends::guest_iovecs::GuestIovecs;

pub use tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};

const _: () = assert!(tap::VNET_HDR_LEN == crate::virtio_net::NET_HDR_LEN);

/// Read one packet (virtio-net header + frame) from a tap queue. `Ok(None)`: none waiting.
pub fn read_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Write one packet, gathered straight from guest memory, to a tap queue.
pub fn write_packet(fd: RawFd, bufs: &GuestIovecs) -> io::Result<usize> {
    let iov = bufs.iovecs_from(0);
    let count = iov.len().min(backends::guest_iovecs::IOV_MAX) as libc::c_int;
    loop {
        // SAFETY: every iovec points into guest memory that `bufs` keeps mapped, with its
        // slice's length; the kernel only reads from them.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
