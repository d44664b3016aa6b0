//! Which tap queue a guest packet is written to, so that the flow's packets from the host
//! come back on one receive queue.
//!
//! The tap steers a host packet to the queue its flow was last *written* on (the kernel's
//! automatic flow steering, `tun_flow_update`). Linux guests send a TCP connection's ACKs from
//! whichever CPU runs at the moment (XPS), so with one tap queue per transmit queue a
//! receiving connection hops between queues, and packets already waiting on the old queue
//! arrive after newer ones on the new queue: the sender counts them lost and retransmits
//! (measured in docs/benchmarks.md). Writing all of a flow's packets on one queue keeps the
//! flow on that queue in both directions, as RSS does on a NIC.
//!
//! Which queue: the [`FlowTable`] gives each new flow the next queue in turn and remembers it.
//! Picking by the hash alone (as RSS does) put two flows on one queue half of the time, and
//! then one guest vCPU received both (docs/benchmarks.md: those runs were the slow ones).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Flows a [`FlowTable`] tells apart; flows whose hashes share a slot share a queue.
const FLOW_SLOTS: usize = 65536;

/// The queue of each flow (by its [`hash`]): new flows take the queues in turn. Shared by the
/// pairs' threads without a lock (a slot is claimed with one compare-and-swap).
pub struct FlowTable {
    /// Queue index + 1 per slot; 0: no flow yet.
    slots: Box<[AtomicU8]>,
    next: AtomicUsize,
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable {
            slots: (0..FLOW_SLOTS).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl FlowTable {
    /// The queue (of `n`, at most 255) the flow with `hash` goes out on: the one it got
    /// before, or the next in turn if it has none yet (or had one past `n`, after the number
    /// of queues went down).
    pub fn queue(&self, hash: u32, n: usize) -> usize {
        let slot = &self.slots[hash as usize % FLOW_SLOTS];
        let valid = |q: u8| (q != 0 && usize::from(q) <= n).then(|| usize::from(q) - 1);
        let had = slot.load(Ordering::Relaxed);
        if let Some(q) = valid(had) {
            return q;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mine = u8::try_from(turn + 1).unwrap_or(1);
        match slot.compare_exchange(had, mine, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => turn,
            // another pair's thread claimed it first: take its choice
            Err(now) => valid(now).unwrap_or(turn),
        }
    }
}

/// The symmetric hash of a frame's IPv4/IPv6 flow (addresses, protocol, and TCP/UDP/SCTP
/// ports when the packet is not a fragment): the same for both directions of a connection.
/// `None` for anything else (ARP, short or malformed frames).
pub fn hash(frame: &[u8]) -> Option<u32> {
    let mut l3 = 12;
    let mut ethertype = be16(frame, l3)?;
    // up to two VLAN tags (802.1Q, 802.1ad)
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        l3 += 4;
        ethertype = be16(frame, l3)?;
    }
    let ip = frame.get(l3 + 2..)?;
    let first = *ip.first()?;
    let (addrs, proto, l4) = match (ethertype, first >> 4) {
        (0x0800, 4) => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let fragment = be16(ip, 6)? & 0x3fff != 0; // MF or an offset
            let addrs = be32(ip, 12)? ^ be32(ip, 16)?;
            (addrs, *ip.get(9)?, (!fragment).then_some(ihl))
        }
        (0x86dd, 6) => {
            let mut addrs = 0;
            for word in 0..8 {
                addrs ^= be32(ip, 8 + 4 * word)?;
            }
            (addrs, *ip.get(6)?, Some(40))
        }
        _ => return None,
    };
    let ports = match (proto, l4) {
        (6 | 17 | 132, Some(at)) => be16(ip, at)? ^ be16(ip, at + 2)?,
        _ => 0,
    };
    let key = (u64::from(addrs) << 32) | (u64::from(ports) << 8) | u64::from(proto);
    Some((key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, frag: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 40, 0, 0];
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, 6, 0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&sport.to_be_bytes());
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&[0; 16]);
        f.extend_from_slice(&ip);
        f
    }

    fn ipv6_udp(src: u8, dst: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        let mut ip = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        ip.extend_from_slice(&[0xfd; 15]);
        ip.push(src);
        ip.extend_from_slice(&[0xfd; 15]);
        ip.push(dst);
        ip.extend_from_slice(&sport.to_be_bytes());
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&[0; 4]);
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn both_directions_of_a_connection_hash_alike() {
        let out = ipv4_tcp([10, 0, 2, 15], [10, 0, 2, 1], 40000, 5201, 0);
        let back = ipv4_tcp([10, 0, 2, 1], [10, 0, 2, 15], 5201, 40000, 0);
        assert_eq!(hash(&out), hash(&back));
        assert!(hash(&out).is_some());
        assert_eq!(
            hash(&ipv6_udp(1, 2, 53, 999)),
            hash(&ipv6_udp(2, 1, 999, 53))
        );
        assert!(hash(&ipv6_udp(1, 2, 53, 999)).is_some());
    }

    #[test]
    fn new_flows_take_the_queues_in_turn_and_keep_theirs() {
        let table = FlowTable::default();
        // (flows in slots of their own: hashes below FLOW_SLOTS)
        let first: Vec<usize> = (0..1000).map(|h| table.queue(h, 2)).collect();
        let turns: Vec<usize> = (0..1000).map(|i| i % 2).collect();
        assert_eq!(first, turns);
        let again: Vec<usize> = (0..1000).rev().map(|h| table.queue(h, 2)).collect();
        assert_eq!(again, turns.into_iter().rev().collect::<Vec<_>>());
    }

    #[test]
    fn a_flow_on_a_queue_that_went_away_gets_a_new_one() {
        let table = FlowTable::default();
        let (a, b, c) = (1, 2, 3);
        assert_eq!(table.queue(a, 3), 0);
        assert_eq!(table.queue(b, 3), 1);
        assert_eq!(table.queue(c, 3), 2);
        // down to two queues: c's queue 2 is gone, a and b keep theirs
        assert!(table.queue(c, 2) < 2);
        assert_eq!(table.queue(a, 2), 0);
        assert_eq!(table.queue(b, 2), 1);
    }

    #[test]
    fn a_vlan_tag_is_looked_through_and_fragments_hash_by_address_only() {
        let plain = ipv4_tcp([10, 0, 2, 15], [10, 0, 2, 1], 40000, 5201, 0);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(hash(&tagged), hash(&plain));
        let first = ipv4_tcp([10, 0, 2, 15], [10, 0, 2, 1], 40000, 5201, 0x2000);
        let other = ipv4_tcp([10, 0, 2, 15], [10, 0, 2, 1], 1, 2, 0x0010);
        assert_eq!(hash(&first), hash(&other));
    }

    #[test]
    fn anything_else_has_no_flow_and_nothing_panics() {
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(hash(&arp), None);
        let whole = ipv4_tcp([10, 0, 2, 15], [10, 0, 2, 1], 40000, 5201, 0);
        // cut anywhere before the end of the ports: no flow (and no panic)
        for len in 0..14 + 20 + 4 {
            assert_eq!(hash(&whole[..len]), None, "{len} bytes");
        }
        assert!(hash(&whole[..14 + 20 + 4]).is_some());
        let mut bad_ihl = whole.clone();
        bad_ihl[14] = 0x41;
        assert_eq!(hash(&bad_ihl), None);
        let mut huge_ihl = whole.clone();
        huge_ihl[14] = 0x4f; // a 60-byte header whose ports lie past the frame's end
        assert_eq!(hash(&huge_ihl), None);
        let mut wrong_version = whole;
        wrong_version[14] = 0x65; // version 6 behind an IPv4 ethertype
        assert_eq!(hash(&wrong_version), None);
    }
}
