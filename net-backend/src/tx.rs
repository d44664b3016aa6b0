//! Guest → tap: each transmit chain (virtio-net header + frame, all device-readable) is
//! written to the tap with one `writev` straight from guest memory. The header passes through
//! unchanged: the tap reads the same `virtio_net_hdr_v1` and refuses bad GSO/checksum fields.

use std::os::fd::RawFd;

use backends::descriptor_chain::{ChainBuffers, ChainError};
use backends::guest_iovecs::{GuestIovecs, IOV_MAX};
use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::DescriptorChain;

use crate::flow::{self, FlowTable};
use crate::tap;
use crate::virtio_net::{MAX_PACKET_LEN, MIN_FRAME_LEN, NET_HDR_LEN};

/// What became of one transmit chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Frame bytes (without the header) handed to the tap.
    Frame(usize),
    /// The chain broke the rules; nothing was sent.
    Malformed(&'static str),
    /// A well-formed packet the tap refused (e.g. an invalid GSO header).
    Refused,
}

/// The chain's buffers, if they are all device-readable, inside guest memory, and add up to
/// a packet of a sane size.
pub fn readable_buffers<'a, M>(
    chain: DescriptorChain<M>,
    mem: &'a GuestMemoryMmap,
) -> Result<GuestIovecs<'a>, &'static str>
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    let bufs = ChainBuffers::readable_only(chain).map_err(|e| match e {
        ChainError::CutShort => "a chain that does not end",
        // out of order or not: a device-writable buffer (readable_only refuses nothing else)
        _ => "a device-writable buffer in a transmit chain",
    })?;
    let total = bufs.readable_len();
    if total > MAX_PACKET_LEN as u64 {
        return Err("a packet larger than 64 KiB");
    }
    let iovecs = bufs
        .readable_iovecs(mem)
        .map_err(|_| "a buffer outside guest memory")?;
    if total < (NET_HDR_LEN + MIN_FRAME_LEN) as u64 {
        return Err("a packet shorter than header + Ethernet header");
    }
    if iovecs.slices().len() > IOV_MAX {
        return Err("a packet in more than 1024 pieces");
    }
    Ok(iovecs)
}

/// Bytes of a frame enough to find its flow: Ethernet, two VLAN tags, an IPv4 header with
/// options or an IPv6 header, and the ports.
const FLOW_HEADERS: usize = 14 + 8 + 60 + 4;

/// The tap queues a transmitted packet may go out on.
pub struct TapQueues<'a> {
    /// The transmitting pair's own queue (or the first, if its own is detached): for
    /// packets with no flow, and for all of them when there is no choice.
    pub own: RawFd,
    /// The attached queues a flow goes out on one of (see [`crate::flow`]); with fewer than
    /// two, `own` takes everything and no frame is hashed.
    pub flows: &'a [RawFd],
    /// Which of `flows` each flow has.
    pub table: &'a FlowTable,
}

impl TapQueues<'_> {
    fn for_frame(&self, bufs: &GuestIovecs) -> RawFd {
        if self.flows.len() < 2 {
            return self.own;
        }
        let mut headers = [0u8; FLOW_HEADERS];
        let n = bufs.len().saturating_sub(NET_HDR_LEN).min(FLOW_HEADERS);
        bufs.sub(NET_HDR_LEN, n).copy_to(&mut headers[..n]);
        flow::hash(&headers[..n])
            .and_then(|h| self.flows.get(self.table.queue(h, self.flows.len())))
            .copied()
            .unwrap_or(self.own)
    }
}

/// Write the packet of `chain` to the tap queue of `queues` its flow belongs on.
pub fn transmit<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap, queues: &TapQueues) -> Sent
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    let bufs = match readable_buffers(chain, mem) {
        Ok(b) => b,
        Err(why) => return Sent::Malformed(why),
    };
    let fd = queues.for_frame(&bufs);
    match tap::write_packet(fd, &bufs) {
        Ok(n) => Sent::Frame(n.saturating_sub(NET_HDR_LEN)),
        Err(e) => {
            tracing::debug!("the tap refused a packet: {e}");
            Sent::Refused
        }
    }
}
