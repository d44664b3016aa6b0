//! A descriptor chain walked again from its head index alone, for resubmitting the requests a
//! backend had in flight when it stopped: the inflight region (the memory SET_INFLIGHT_FD
//! shares) records each pending request's head index, and after a restart the backend walks
//! those chains once more without popping them from the available ring (they were popped
//! before).
//!
//! virtio-queue 0.18 hands out a `DescriptorChain` only as it pops the available ring: its
//! constructor from a head index is crate-private. [`SavedChain`] is the same walk, rebuilt. It
//! mirrors virtio-queue's bounds step for step — at most a queue size of descriptors from the
//! queue's table, then at most an indirect table's length from that table; an indirect table
//! only at the top level, a whole number of descriptors and at most `u16::MAX` of them; at most
//! 4 GiB in all; the walk stops at a descriptor it cannot read — so a resubmitted chain is
//! parsed exactly as the popped one was (the tests check it against virtio-queue on random
//! tables). [`ChainBuffers`](crate::descriptor_chain::ChainBuffers) takes either.

use std::mem::size_of;

use crate::guest_memory::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress};

/// The size of one descriptor in a table, and the granule of an indirect table's length.
const DESC_SIZE: u32 = size_of::<Descriptor>() as u32;

/// The descriptors of the chain that starts at a saved head index, in chain order (an
/// indirect descriptor is followed, not yielded), read from guest memory as they are reached.
#[derive(Debug, Clone)]
pub struct SavedChain<'a> {
    mem: &'a GuestMemoryMmap,
    head: u16,
    /// The table being walked: the queue's descriptor table, then an indirect one.
    table: GuestAddress,
    /// How many descriptors `table` holds.
    table_len: u16,
    next_index: u16,
    /// How many more descriptors may be yielded from `table`.
    ttl: u16,
    yielded_bytes: u32,
    indirect: bool,
}

impl<'a> SavedChain<'a> {
    /// The chain at `head` in the descriptor table at `desc_table` of a queue of `queue_size`
    /// (nothing is read until the first descriptor is asked for; a head past the table yields
    /// nothing).
    pub fn new(
        mem: &'a GuestMemoryMmap,
        desc_table: GuestAddress,
        queue_size: u16,
        head: u16,
    ) -> Self {
        SavedChain {
            mem,
            head,
            table: desc_table,
            table_len: queue_size,
            next_index: head,
            ttl: queue_size,
            yielded_bytes: 0,
            indirect: false,
        }
    }

    /// The head index the chain starts at (the id its used element carries).
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Go on in the indirect table `desc` names, from its first entry; `None` (and nothing
    /// changed) if the walk is already in one, or the table is not a whole number of
    /// descriptors or has more than `u16::MAX` of them.
    fn enter_indirect_table(&mut self, desc: &Descriptor) -> Option<()> {
        if self.indirect || !desc.len().is_multiple_of(DESC_SIZE) {
            return None;
        }
        let table_len = u16::try_from(desc.len() / DESC_SIZE).ok()?;
        self.table = desc.addr();
        self.table_len = table_len;
        self.next_index = 0;
        self.ttl = table_len;
        self.indirect = true;
        Some(())
    }
}

impl Iterator for SavedChain<'_> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        // at most twice round: a nested indirect descriptor is refused
        loop {
            if self.ttl == 0 || self.next_index >= self.table_len {
                return None;
            }
            let addr = self
                .table
                .checked_add(u64::from(self.next_index) * u64::from(DESC_SIZE))?;
            let desc = self.mem.read_obj::<Descriptor>(addr).ok()?;
            if desc.refers_to_indirect_table() {
                self.enter_indirect_table(&desc)?;
                continue;
            }
            // a chain of more than 4 GiB in all is illegal (virtio 1.2, 2.7.5.2): stop before it
            self.yielded_bytes = self.yielded_bytes.checked_add(desc.len())?;
            if desc.has_next() {
                self.next_index = desc.next();
                // ttl > 0, checked above
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
    }
}

#[cfg(test)]
#[path = "saved_chain_tests.rs"]
mod tests;
