//! Inflight I/O tracking (vhost-user `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`): a backend that is
//! killed or restarted under a running guest leaves, in a memfd the frontend keeps, which
//! requests the guest is still waiting for; its successor resubmits them, each completing
//! exactly once.
//!
//! vhost-user-backend 0.24 answers GET/SET_INFLIGHT_FD "not supported" and keeps its request
//! handler private, so the two messages are served by the relay in front of it
//! ([`crate::relay`], via [`messages`]) and the region reaches the device through an
//! [`InflightSlot`]. The layout is in [`region`], the order of the bookkeeping and the recovery
//! in [`tracker`]; resubmitted chains are walked from their saved heads by
//! [`crate::saved_chain`].

pub mod messages;
pub mod region;
#[cfg(test)]
mod tests;
pub mod tracker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use region::InflightRegion;
pub use tracker::{Recovery, Tracker};

/// Why a region could not be made, mapped or trusted.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error(
        "an inflight region for {num_queues} queues of {queue_size} descriptors is not \
         possible (1 or more queues, a queue size that is a power of two up to 32768)"
    )]
    Geometry { num_queues: u16, queue_size: u16 },
    #[error("cannot create the inflight memfd")]
    Memfd(#[source] std::io::Error),
    #[error("cannot map the inflight region")]
    Map(#[source] std::io::Error),
    #[error(
        "the inflight region ({size} bytes at offset {offset} of a {file_len}-byte file) is \
         smaller than the {needed} bytes its queues need"
    )]
    TooSmall {
        size: u64,
        offset: u64,
        file_len: u64,
        needed: usize,
    },
    #[error("the inflight region has version {0}, not 1")]
    Version(u16),
    #[error("the inflight region is for {found} descriptors per queue, not {expected}")]
    DescNum { found: u16, expected: u16 },
    #[error("the inflight region has feature bits {0:#x}; none are defined")]
    Features(u64),
    #[error("the inflight region names descriptor {head}, outside a ring of {ring_size}")]
    Head { head: u16, ring_size: u16 },
    #[error("descriptor {head} of the inflight region has the in-flight byte {byte}")]
    InflightByte { head: u16, byte: u8 },
    #[error(
        "the inflight region holds {count} requests in flight, more than a ring of {ring_size}"
    )]
    TooMany { count: usize, ring_size: u16 },
}

/// The region the frontend gave the current connection, shared between the relay (which
/// receives it) and the device's workers (which track in it). Each SET_INFLIGHT_FD makes a new
/// generation: a worker that sees a generation it has not recovered from yet recovers first.
/// Workers look on every event, so the generation is also kept in an atomic and the lock is
/// only taken when it changed.
#[derive(Clone)]
pub struct InflightSlot {
    inner: Arc<Mutex<SlotState>>,
    generation: Arc<AtomicU64>,
    /// The device's queue count (GET/SET_INFLIGHT_FD may name no more).
    max_queues: u16,
}

#[derive(Default)]
struct SlotState {
    region: Option<Arc<InflightRegion>>,
    generation: u64,
}

impl InflightSlot {
    pub fn new(max_queues: u16) -> Self {
        InflightSlot {
            inner: Arc::default(),
            generation: Arc::default(),
            max_queues,
        }
    }

    pub fn max_queues(&self) -> u16 {
        self.max_queues
    }

    /// Install the region of a SET_INFLIGHT_FD.
    pub fn set(&self, region: InflightRegion) {
        if let Ok(mut s) = self.inner.lock() {
            s.region = Some(Arc::new(region));
            s.generation += 1;
            self.generation.store(s.generation, Ordering::Release);
        }
    }

    /// The current generation and its region, if it is not `seen` (0: none seen yet).
    pub fn newer_than(&self, seen: u64) -> Option<(u64, Option<Arc<InflightRegion>>)> {
        if self.generation.load(Ordering::Acquire) == seen {
            return None;
        }
        let s = self.inner.lock().ok()?;
        (s.generation != seen).then(|| (s.generation, s.region.clone()))
    }
}
