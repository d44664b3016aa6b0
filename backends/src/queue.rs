//! The queue loop every device shares.

use std::io;

use vhost_user_backend::{VringRwLock, VringT};

/// Serve `vring` with `work` until the guest has added nothing more. With EVENT_IDX the guest
/// is told after each pass where to notify next, and a pass runs again if it added chains
/// meanwhile (so no kick is lost between the last pop and re-enabling notifications).
pub fn drain(
    vring: &VringRwLock,
    event_idx: bool,
    mut work: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    if !event_idx {
        return work();
    }
    loop {
        vring.disable_notification().map_err(io::Error::other)?;
        work()?;
        if !vring.enable_notification().map_err(io::Error::other)? {
            return Ok(());
        }
    }
}
