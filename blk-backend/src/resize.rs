//! Online resize: the image grows through the control socket (`{"op":"resize"}`, what
//! `vm.resize-disk` and `svctl blockresize` use) or was grown on the host and SIGUSR2 says so;
//! the device takes the new capacity and tells its frontend (a config-change message: the
//! vmm interrupts the guest, whose driver reads the new capacity).

use std::io;
use std::sync::Mutex;

use backends::frontend_channel::FrontendChannel;

use crate::blk::BlkDevice;

/// The disk's size changed from `old` to `new` bytes: tell the frontend. Whether it was told
/// (without a channel the guest sees the new size when its driver next reads the config).
pub fn announce(channel: &Mutex<FrontendChannel>, old: u64, new: u64) -> bool {
    tracing::info!("resize: the disk changes from {old} to {new} bytes");
    match channel.lock().ok().map(|c| c.config_changed()) {
        Some(Ok(true)) => {
            tracing::info!("resize: the frontend was told");
            true
        }
        _ => {
            tracing::warn!(
                "resize: the frontend could not be told; the guest sees the new size when its \
                 driver next reads the configuration"
            );
            false
        }
    }
}

/// SIGUSR2: take the image's size as it is now.
pub fn refresh(device: &BlkDevice, channel: &Mutex<FrontendChannel>) {
    match device.resize() {
        Ok(None) => tracing::info!("resize: the image size did not change"),
        Ok(Some((old, new))) => {
            announce(channel, old, new);
        }
        Err(e) => tracing::error!("resize: cannot read the image size: {e}"),
    }
}

/// What a grow did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub old: u64,
    pub new: u64,
    /// Whether the frontend was told (false also when the size did not change).
    pub frontend_told: bool,
}

/// Grow the disk to `size` bytes and tell the frontend.
pub fn grow(device: &BlkDevice, channel: &Mutex<FrontendChannel>, size: u64) -> io::Result<Grown> {
    if device.readonly {
        let why = "the disk is served read-only";
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    }
    let disk = device.disk.get();
    let old = disk.capacity();
    let new = disk.grow(size)?;
    let frontend_told = new != old && announce(channel, old, new);
    Ok(Grown {
        old,
        new,
        frontend_told,
    })
}
