//! Tap → guest. A packet is read from the tap into this queue's buffer, then copied into as
//! many receive chains as it needs (one without MRG_RXBUF; `num_buffers` in its header says
//! how many with it). When the guest has not given enough buffers the packet stays here and
//! the rest stay in the tap (bounded by its queue length, no busy loop): the guest's next
//! receive kick resumes delivery.

use std::io;
use std::os::fd::RawFd;

use backends::descriptor_chain::ChainBuffers;
use backends::guest_iovecs::GuestIovecs;
use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::stats::{add, NetStats};
use crate::tap;
use crate::virtio_net::{MAX_PACKET_LEN, NET_HDR_LEN, NUM_BUFFERS_OFFSET};

/// Why delivery stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The tap has nothing more.
    TapEmpty,
    /// The guest has no (or not enough) receive buffers; a packet is waiting.
    NoBuffers,
}

pub struct RxQueue {
    buf: Vec<u8>,
    /// Length of the packet in `buf` still to be delivered.
    pending: Option<usize>,
}

impl Default for RxQueue {
    fn default() -> Self {
        RxQueue {
            buf: vec![0; MAX_PACKET_LEN],
            pending: None,
        }
    }
}

/// The chain's buffers, if all are device-writable and inside guest memory.
fn writable_buffers<'a, M>(
    chain: DescriptorChain<M>,
    mem: &'a GuestMemoryMmap,
) -> Option<GuestIovecs<'a>>
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    ChainBuffers::writable_only(chain)
        .and_then(|bufs| bufs.writable_iovecs(mem))
        .ok()
}

enum Placed {
    /// Delivered in this many chains.
    Delivered(usize),
    /// Not enough buffers: everything popped was put back.
    NoRoom,
    /// Dropped: it does not fit one chain and buffers cannot be merged.
    TooBig,
}

/// After [`Stop::NoBuffers`]: ask the guest to kick once it adds buffers *beyond those already
/// in the ring* (a packet that needs several merged buffers may not fit in what is there).
/// With EVENT_IDX that means `avail_event` = the guest's current avail index, not our
/// position in the ring: the guest kicks only when its index passes `avail_event`, and it is
/// already past our position, so arming there would never bring a kick (and re-checking
/// "are there buffers after our position" would spin while the guest cannot run). Returns
/// true if buffers were added meanwhile (try again now, no kick will come for them).
pub fn wait_for_more_buffers(queue: &mut Queue, mem: &GuestMemoryMmap) -> io::Result<bool> {
    let ours = queue.next_avail();
    let posted = queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map_err(io::Error::other)?
        .0;
    // enable_notification arms at, and compares with, the position it is given
    queue.set_next_avail(posted);
    let added = queue.enable_notification(mem).map_err(io::Error::other);
    queue.set_next_avail(ours);
    added
}

impl RxQueue {
    /// Deliver packets until the tap is empty or the guest's buffers run out. Returns how many
    /// used-ring entries were added (the caller decides whether to interrupt the guest).
    pub fn receive(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        fd: RawFd,
        mergeable: bool,
        stats: &NetStats,
        pair: usize,
    ) -> io::Result<(usize, Stop)> {
        let counters = &stats.pairs[pair];
        let mut used = 0;
        loop {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match tap::read_packet(fd, &mut self.buf)? {
                    Some(len) => len,
                    None => return Ok((used, Stop::TapEmpty)),
                },
            };
            if len <= NET_HDR_LEN {
                add(&counters.rx_dropped, 1);
                continue;
            }
            let (placed, bad) = self.place(queue, mem, len, mergeable);
            for head in &bad {
                // a malformed chain is returned unused, so the guest gets its buffer back
                backends::queue::return_chain(queue, mem, *head, 0);
            }
            add(&stats.malformed_chains, bad.len() as u64);
            used += bad.len();
            match placed {
                Placed::Delivered(chains) => {
                    used += chains;
                    add(&counters.rx_packets, 1);
                    add(&counters.rx_bytes, (len - NET_HDR_LEN) as u64);
                }
                Placed::TooBig => add(&counters.rx_dropped, 1),
                Placed::NoRoom => {
                    self.pending = Some(len);
                    return Ok((used, Stop::NoBuffers));
                }
            }
        }
    }

    /// Copy the packet in `buf[..len]` into receive chains. Malformed chains met on the way
    /// are skipped and returned in the second value (except when nothing is committed, in
    /// which case they are put back with the rest).
    fn place(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        len: usize,
        mergeable: bool,
    ) -> (Placed, Vec<u16>) {
        let mut chains: Vec<(u16, GuestIovecs)> = Vec::new();
        let mut bad = Vec::new();
        let mut room = 0usize;
        while room < len {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                for _ in 0..chains.len() + bad.len() {
                    queue.go_to_previous_position();
                }
                return (Placed::NoRoom, Vec::new());
            };
            let head = chain.head_index();
            match writable_buffers(chain, mem) {
                Some(bufs) if !bufs.is_empty() => {
                    room += bufs.len();
                    chains.push((head, bufs));
                }
                _ => bad.push(head),
            }
            if !mergeable && !chains.is_empty() {
                break;
            }
        }
        if room < len {
            // one chain, too small, no merging: the packet is lost, the chain goes back
            for _ in 0..chains.len() + bad.len() {
                queue.go_to_previous_position();
            }
            return (Placed::TooBig, Vec::new());
        }
        let count = chains.len();
        self.buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&(count as u16).to_le_bytes());
        let mut at = 0;
        for (head, bufs) in chains {
            let n = bufs.len().min(len - at);
            bufs.copy_from(&self.buf[at..at + n]);
            at += n;
            backends::queue::return_chain(queue, mem, head, n as u32);
        }
        (Placed::Delivered(count), bad)
    }
}
