//! One queue's inflight bookkeeping, in the spec's order, and recovery after a restart.
//!
//! A device that pops a chain marks it in flight ([`Tracker::popped`]: counter, then the
//! inflight byte). Returning it follows the publish order of the spec (and libvhost-user's
//! `vu_queue_push`):
//! 1. `last_batch_head = head` ([`Tracker::publishing`]),
//! 2. the used element, then the used ring's index (virtio-queue's `add_used`),
//! 3. `inflight[head] = 0`, then `used_idx = ` the new index ([`Tracker::published`]).
//!
//! A process killed anywhere in between leaves a region [`Tracker::recover`] can read: if the
//! ring's index moved past the region's `used_idx`, step 2 completed and the last batch head is
//! no longer in flight; every descriptor still marked is resubmitted, oldest counter first; the
//! next chain to pop is at `used + in flight` (every popped chain is either published or still
//! marked; a chain popped but not yet marked is simply popped again).

use super::region::{QueueArea, VERSION};
use super::InflightError;

/// What a new backend must do before it serves a queue whose region it inherited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Heads to run again, in the order they were first popped.
    pub resubmit: Vec<u16>,
    /// Where the device's next pop from the available ring is.
    pub next_avail: u16,
}

/// The tracking of one queue in its area of the shared region.
pub struct Tracker {
    area: QueueArea,
    /// The counter the next popped chain gets.
    next_counter: u64,
}

impl Tracker {
    pub fn new(area: QueueArea) -> Self {
        Tracker {
            area,
            next_counter: 0,
        }
    }

    /// Read what a previous backend left for a ring of `ring_size` descriptors whose used
    /// index is now `ring_used`. A fresh area (version 0) is initialized. An area no backend
    /// of ours could have written — a hostile or corrupt one — is refused: nothing is
    /// resubmitted from it (the caller logs it and [`Tracker::reinitialize`]s it).
    pub fn recover(&mut self, ring_used: u16, ring_size: u16) -> Result<Recovery, InflightError> {
        let fresh = Recovery {
            resubmit: Vec::new(),
            next_avail: ring_used,
        };
        match self.area.version() {
            0 => {
                self.reinitialize(ring_used);
                return Ok(fresh);
            }
            VERSION => {}
            other => return Err(InflightError::Version(other)),
        }
        let capacity = self.area.desc_num_capacity();
        let desc_num = self.area.desc_num();
        if desc_num != capacity {
            return Err(InflightError::DescNum {
                found: desc_num,
                expected: capacity,
            });
        }
        if self.area.features() != 0 {
            return Err(InflightError::Features(self.area.features()));
        }
        let last = self.area.last_batch_head();
        if last >= desc_num {
            return Err(InflightError::Head {
                head: last,
                ring_size: desc_num,
            });
        }
        let mut pending = Vec::new();
        for head in 0..desc_num {
            match self.area.inflight(head) {
                0 => {}
                1 if head == last && self.area.used_idx() != ring_used => {}
                1 if head >= ring_size => {
                    return Err(InflightError::Head { head, ring_size });
                }
                1 => pending.push((self.area.counter(head), head)),
                byte => return Err(InflightError::InflightByte { head, byte }),
            }
        }
        if pending.len() > usize::from(ring_size) {
            return Err(InflightError::TooMany {
                count: pending.len(),
                ring_size,
            });
        }
        // the interrupted publish (step 2 done, step 3 not) is finished here
        if self.area.used_idx() != ring_used {
            self.area.set_inflight(last, 0);
            self.area.set_used_idx(ring_used);
        }
        pending.sort_unstable();
        self.next_counter = pending
            .last()
            .map_or(0, |(counter, _)| counter.wrapping_add(1));
        Ok(Recovery {
            next_avail: ring_used.wrapping_add(pending.len() as u16),
            resubmit: pending.into_iter().map(|(_, head)| head).collect(),
        })
    }

    /// Start the area afresh: nothing in flight, the used index `ring_used`.
    pub fn reinitialize(&mut self, ring_used: u16) {
        self.area.clear();
        self.area.set_desc_num(self.area.desc_num_capacity());
        self.area.set_used_idx(ring_used);
        self.area.set_version(VERSION);
        self.next_counter = 0;
    }

    /// Chain `head` was taken from the available ring.
    pub fn popped(&mut self, head: u16) {
        self.area.set_counter(head, self.next_counter);
        self.next_counter = self.next_counter.wrapping_add(1);
        self.area.set_inflight(head, 1);
    }

    /// Chain `head` is about to go in the used ring.
    pub fn publishing(&self, head: u16) {
        self.area.set_last_batch_head(head);
    }

    /// Chain `head` is in the used ring, whose index is now `used_idx`.
    pub fn published(&self, head: u16, used_idx: u16) {
        self.area.set_inflight(head, 0);
        self.area.set_used_idx(used_idx);
    }

    #[cfg(test)]
    pub(super) fn area(&self) -> &QueueArea {
        &self.area
    }

    /// How many chains the area holds as in flight (for the tests and the logs).
    pub fn in_flight(&self) -> usize {
        (0..self.area.desc_num_capacity())
            .filter(|&h| self.area.inflight(h) != 0)
            .count()
    }
}
