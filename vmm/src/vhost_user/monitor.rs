//! Watching a backend's socket: when the backend process goes away, say so once, naming the
//! device and socket, and make the device report DEVICE_NEEDS_RESET to the guest. The vmm
//! and every other device keep running.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::virtio::pci::VirtioPciDevice;

/// Start watching `fd` (the backend connection; duplicated here) for `device`.
pub fn spawn(
    name: String,
    socket: PathBuf,
    fd: RawFd,
    device: Arc<Mutex<VirtioPciDevice>>,
) -> std::io::Result<()> {
    // SAFETY: dup of a descriptor owned by the device's Frontend; the copy is owned by `file`.
    let dup = unsafe { libc::dup(fd) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(dup) };
    std::thread::Builder::new()
        .name(format!("{name}-monitor"))
        .spawn(move || {
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd that lives across the call.
                let n = unsafe { libc::poll(&mut pfd, 1, -1) };
                if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if n != 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                    break;
                }
                if n < 0 {
                    return;
                }
            }
            let mut dev = device.lock().unwrap_or_else(|e| e.into_inner());
            tracing::error!(
                device = %name,
                socket = %socket.display(),
                counters = ?dev.counters(),
                "the vhost-user backend disconnected; the device reports DEVICE_NEEDS_RESET to the guest"
            );
            eprintln!(
                "splitvisor: device {name}: the vhost-user backend on {} disconnected",
                socket.display()
            );
            dev.needs_reset();
        })
        .map(|_| ())
}
