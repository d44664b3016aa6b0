//! Receive and transmit against virtio-queue's mock split queue and a datagram socket pair
//! standing in for the tap (one datagram = one packet, as a tap reads and writes), including
//! the chains a hostile guest can send.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::rx::{wait_for_more_buffers, RxQueue, Stop};
use crate::stats::NetStats;
use crate::tx::{self, Sent};
use crate::virtio_net::NET_HDR_LEN;

const WRITE: u16 = 2; // VRING_DESC_F_WRITE
const NEXT: u16 = 1; // VRING_DESC_F_NEXT

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// Descriptor `index` of a table: `next` is the following index when `flags` has NEXT.
fn desc(index: u16, addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, index + 1))
}

/// The "tap": we write packets into `host`, the queue reads them from `tap`.
fn tap_pair() -> (UnixDatagram, UnixDatagram) {
    let (host, tap) = UnixDatagram::pair().unwrap();
    tap.set_nonblocking(true).unwrap();
    (host, tap)
}

/// A packet: 12-byte header (num_buffers 0) and `len` frame bytes counting up.
fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; NET_HDR_LEN];
    p.extend((0..len).map(|i| (i % 251) as u8));
    p
}

fn used(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> (u32, u32) {
    let at = q.used_addr().0 + 4 + 8 * i;
    let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
    (id, len)
}

#[test]
fn a_big_packet_is_merged_across_chains_with_num_buffers() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    // three receive chains of 1000 bytes each
    let descs: Vec<_> = (0..3)
        .map(|i| desc(i, 0x10_0000 + u64::from(i) * 0x1000, 1000, WRITE))
        .collect();
    mq.add_desc_chains(&descs, 0).unwrap();
    let mut queue: Queue = mq.create_queue().unwrap();
    let (host, tap) = tap_pair();
    let pkt = packet(2500);
    host.send(&pkt).unwrap();
    let stats = NetStats::new(1);
    let mut rx = RxQueue::default();
    let (n, stop) = rx
        .receive(&mut queue, &mem, tap.as_raw_fd(), true, &stats, 0)
        .unwrap();
    assert_eq!((n, stop), (3, Stop::TapEmpty));
    let mut got = vec![0u8; 3000];
    mem.read_slice(&mut got[..1000], GuestAddress(0x10_0000))
        .unwrap();
    mem.read_slice(&mut got[1000..2000], GuestAddress(0x10_1000))
        .unwrap();
    mem.read_slice(&mut got[2000..], GuestAddress(0x10_2000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[NET_HDR_LEN..pkt.len()], &pkt[NET_HDR_LEN..]);
    assert_eq!(used(&mem, &mq, 0), (0, 1000));
    assert_eq!(used(&mem, &mq, 2), (2, 512), "the rest of 2512 bytes");
    assert!(stats.lines()[0].contains("rx_packets=1 rx_bytes=2500"));
}

#[test]
fn without_buffers_the_packet_waits_and_nothing_more_is_read() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut queue: Queue = mq.create_queue().unwrap();
    let (host, tap) = tap_pair();
    host.send(&packet(100)).unwrap();
    host.send(&packet(200)).unwrap();
    let stats = NetStats::new(1);
    let mut rx = RxQueue::default();
    let (n, stop) = rx
        .receive(&mut queue, &mem, tap.as_raw_fd(), true, &stats, 0)
        .unwrap();
    assert_eq!((n, stop), (0, Stop::NoBuffers));
    // the guest adds one buffer: the waiting packet goes in, the second waits in the "tap"
    mq.add_desc_chains(&[desc(0, 0x10_0000, 4096, WRITE)], 0)
        .unwrap();
    let (n, stop) = rx
        .receive(&mut queue, &mem, tap.as_raw_fd(), true, &stats, 0)
        .unwrap();
    assert_eq!((n, stop), (1, Stop::NoBuffers));
    assert_eq!(used(&mem, &mq, 0), (0, (NET_HDR_LEN + 100) as u32));
    mq.add_desc_chains(&[desc(1, 0x10_1000, 4096, WRITE)], 1)
        .unwrap();
    let (n, stop) = rx
        .receive(&mut queue, &mem, tap.as_raw_fd(), true, &stats, 0)
        .unwrap();
    assert_eq!((n, stop), (1, Stop::TapEmpty));
    assert_eq!(used(&mem, &mq, 1), (1, (NET_HDR_LEN + 200) as u32));
}

#[test]
fn without_merging_a_packet_too_big_for_its_chain_is_dropped_and_the_chain_kept() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    mq.add_desc_chains(&[desc(0, 0x10_0000, 500, WRITE)], 0)
        .unwrap();
    let mut queue: Queue = mq.create_queue().unwrap();
    let (host, tap) = tap_pair();
    host.send(&packet(1000)).unwrap();
    host.send(&packet(300)).unwrap();
    let stats = NetStats::new(1);
    let mut rx = RxQueue::default();
    let (n, _) = rx
        .receive(&mut queue, &mem, tap.as_raw_fd(), false, &stats, 0)
        .unwrap();
    assert_eq!(
        n, 1,
        "the small packet used the chain the big one could not"
    );
    assert_eq!(used(&mem, &mq, 0), (0, (NET_HDR_LEN + 300) as u32));
    assert!(
        stats.lines()[0].contains("rx_dropped=1"),
        "{:?}",
        stats.lines()
    );
}

#[test]
fn malformed_receive_chains_are_returned_empty_and_counted() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    mq.add_desc_chains(
        &[
            desc(0, 0x10_0000, 4096, 0), // device-readable: not a receive buffer
            desc(1, 0x4000_0000, 4096, WRITE), // outside guest memory
            desc(2, 0x10_2000, 4096, WRITE | NEXT), // a good two-buffer chain
            desc(3, 0x10_3000, 4096, WRITE),
        ],
        0,
    )
    .unwrap();
    let mut queue: Queue = mq.create_queue().unwrap();
    let (host, tap) = tap_pair();
    let pkt = packet(64);
    host.send(&pkt).unwrap();
    let stats = NetStats::new(1);
    let mut rx = RxQueue::default();
    let (n, stop) = rx
        .receive(&mut queue, &mem, tap.as_raw_fd(), true, &stats, 0)
        .unwrap();
    assert_eq!((n, stop), (3, Stop::TapEmpty));
    let mut entries: Vec<_> = (0..3).map(|i| used(&mem, &mq, i)).collect();
    entries.sort();
    assert_eq!(entries, vec![(0, 0), (1, 0), (2, pkt.len() as u32)]);
    let mut got = vec![0u8; pkt.len()];
    mem.read_slice(&mut got, GuestAddress(0x10_2000)).unwrap();
    assert_eq!(&got[NET_HDR_LEN..], &pkt[NET_HDR_LEN..]);
    assert!(stats.lines()[1].contains("malformed_chains=2"));
    // nothing was written outside the good chain's buffer
    let mut other = vec![0u8; 64];
    mem.read_slice(&mut other, GuestAddress(0x10_0000)).unwrap();
    assert!(other.iter().all(|b| *b == 0));
}

fn transmit(mem: &GuestMemoryMmap, descs: &[RawDescriptor], tap: &UnixDatagram) -> Sent {
    let mq = MockSplitQueue::new(mem, 16);
    mq.add_desc_chains(descs, 0).unwrap();
    let mut queue: Queue = mq.create_queue().unwrap();
    let chain = queue.iter(mem).unwrap().next().unwrap();
    let queues = tx::TapQueues {
        own: tap.as_raw_fd(),
        flows: &[],
        table: &crate::flow::FlowTable::default(),
    };
    tx::transmit(chain, mem, &queues)
}

#[test]
fn a_packet_in_two_buffers_goes_out_as_one_write_with_its_header() {
    let mem = memory();
    let pkt = packet(1500);
    mem.write_slice(&pkt[..100], GuestAddress(0x10_0000))
        .unwrap();
    mem.write_slice(&pkt[100..], GuestAddress(0x20_0000))
        .unwrap();
    let (host, tap) = tap_pair();
    let sent = transmit(
        &mem,
        &[
            desc(0, 0x10_0000, 100, NEXT),
            desc(1, 0x20_0000, (pkt.len() - 100) as u32, 0),
        ],
        &tap,
    );
    assert_eq!(sent, Sent::Frame(1500));
    let mut got = vec![0u8; 4096];
    let n = host.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &pkt[..]);
}

#[test]
fn hostile_transmit_chains_are_refused_before_anything_is_written() {
    let mem = memory();
    let (host, tap) = tap_pair();
    host.set_nonblocking(true).unwrap();
    let cases: [(&[RawDescriptor], &str); 4] = [
        (&[desc(0, 0x10_0000, 1500, WRITE)], "device-writable"),
        (&[desc(0, 0x4000_0000, 1500, 0)], "outside guest memory"),
        (&[desc(0, 0x10_0000, 20, 0)], "shorter"),
        (&[desc(0, 0x10_0000, 70_000, 0)], "larger than 64 KiB"),
    ];
    for (descs, why) in cases {
        match transmit(&mem, descs, &tap) {
            Sent::Malformed(m) => assert!(m.contains(why), "{why}: {m}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    let mut buf = [0u8; 16];
    assert!(host.recv(&mut buf).is_err(), "nothing reached the tap");
}

/// A packet that needs more merged buffers than the ring holds: with EVENT_IDX the kick is
/// armed at the guest's avail index (where it will next publish), not at our position (which
/// it is already past and would never kick for), and nothing is reported as "added" until the
/// guest really adds buffers.
#[test]
fn a_packet_waiting_for_more_buffers_arms_the_kick_past_the_posted_ones() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    mq.add_desc_chains(&[desc(0, 0x10_0000, 1000, WRITE)], 0)
        .unwrap();
    let mut queue: Queue = mq.create_queue().unwrap();
    queue.set_event_idx(true);
    let (host, tap) = tap_pair();
    host.send(&packet(2500)).unwrap();
    let stats = NetStats::new(1);
    let mut rx = RxQueue::default();
    let (n, stop) = rx
        .receive(&mut queue, &mem, tap.as_raw_fd(), true, &stats, 0)
        .unwrap();
    assert_eq!((n, stop), (0, Stop::NoBuffers));
    assert_eq!(queue.next_avail(), 0, "the one buffer stays unused");
    // the old way (enable_notification at our position) reported "added" forever
    assert!(!wait_for_more_buffers(&mut queue, &mem).unwrap());
    assert_eq!(queue.next_avail(), 0);
    let avail_event: u16 = mem
        .read_obj(GuestAddress(mq.used_addr().0 + 4 + 8 * 16))
        .unwrap();
    assert_eq!(avail_event, 1, "kick when the guest publishes past index 1");
    // the guest adds two more buffers: seen, and the packet goes in across all three
    mq.add_desc_chains(
        &[
            desc(1, 0x10_1000, 1000, WRITE),
            desc(2, 0x10_2000, 1000, WRITE),
        ],
        1,
    )
    .unwrap();
    // the guest's kick test (vring_need_event) with its index moving 1 -> 3: it kicks
    let (old, new) = (1u16, 3u16);
    assert!(new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old));
    let (n, stop) = rx
        .receive(&mut queue, &mem, tap.as_raw_fd(), true, &stats, 0)
        .unwrap();
    assert_eq!((n, stop), (3, Stop::TapEmpty));
}
