//! The queue loop every device shares, and how a chain goes back to the guest.

use std::io;

use crate::guest_memory::Vring;
use vhost_user_backend::VringT;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

/// Serve `vring` with `work` until the guest has added nothing more. With EVENT_IDX the guest
/// is told after each pass where to notify next, and a pass runs again if it added chains
/// meanwhile (so no kick is lost between the last pop and re-enabling notifications).
///
/// A pass that takes nothing while the ring claims more is allowed once (the driver may have
/// published its index just after the pass looked); a second such pass in a row means the
/// driver's index is not one a ring can have (more than a ring ahead: virtio-queue refuses to
/// pop), and the kick ends there rather than spinning the worker forever. The queue serves
/// again once the driver resets the device.
pub fn drain(
    vring: &Vring,
    event_idx: bool,
    mut work: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    if !event_idx {
        return work();
    }
    let mut idle_passes = 0;
    loop {
        vring.disable_notification().map_err(io::Error::other)?;
        let before = vring.get_ref().get_queue().next_avail();
        work()?;
        if !vring.enable_notification().map_err(io::Error::other)? {
            return Ok(());
        }
        if vring.get_ref().get_queue().next_avail() == before {
            idle_passes += 1;
            if idle_passes == 2 {
                tracing::debug!(
                    "the driver's avail index is beyond the ring: ignoring the kick until the \
                     device is reset"
                );
                return Ok(());
            }
        } else {
            idle_passes = 0;
        }
    }
}

/// Return chain `head` to the guest with `len` bytes written. A head index the guest made up
/// (past the end of the ring) cannot be returned: it is dropped with a debug line and `false`,
/// so that one hostile chain never stops the worker serving the queue.
pub fn return_chain<M: GuestMemory>(queue: &mut Queue, mem: &M, head: u16, len: u32) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("cannot return descriptor chain {head} to the guest: {e}");
            false
        }
    }
}
