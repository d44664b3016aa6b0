//! Building the seeds: a configuration, then operations, in the input format of `queues.rs`
//! and `driver.rs`; and the frames the transmit seeds send.

use super::driver::{write_addr, Desc, Fill, DATA, NEXT, WRITE};
use super::input::Seed;
use super::queues::{Config, CTRL, OP_AVAIL_IDX, OP_CHAIN, OP_PACKET, OP_POKE, RX};
use crate::virtio_net::NET_HDR_LEN;

/// A 16-entry ring, one queue pair, one tap queue.
pub(super) fn config() -> Config {
    Config {
        size_log2: 4,
        taps: 1,
        pairs: 1,
        ..Config::default()
    }
}

pub(super) fn mergeable() -> Config {
    Config {
        mergeable: true,
        ..config()
    }
}

/// Buffer `n` of the data area (4 KiB apart).
pub(super) fn buf(n: u64) -> u64 {
    DATA + n * 0x1000
}

/// A packet: zeroed header, then bytes counting up to the buffer's end.
pub(super) fn packet() -> Fill {
    Fill::counting(&[0; NET_HDR_LEN])
}

/// Builds one seed.
pub(super) struct Build {
    seed: Seed,
}

impl Build {
    pub(super) fn new(config: Config) -> Build {
        let mut seed = Seed::default();
        config.write(&mut seed);
        Build { seed }
    }

    /// A chain on queue `q` with NEXT set on all but its last descriptor.
    pub(super) fn chain(&mut self, q: usize, descs: &[Desc]) -> &mut Self {
        let mut descs = descs.to_vec();
        let last = descs.len().saturating_sub(1);
        for (i, d) in descs.iter_mut().enumerate() {
            if i < last {
                d.flags |= NEXT;
            }
        }
        self.raw_chain(q, &descs)
    }

    /// A chain exactly as given (flags and next fields included).
    pub(super) fn raw_chain(&mut self, q: usize, descs: &[Desc]) -> &mut Self {
        self.seed.u8(OP_CHAIN).u8(q as u8).u8(descs.len() as u8 - 1);
        for d in descs {
            d.write(&mut self.seed);
        }
        self
    }

    /// A receive chain per length, one writable buffer each, from buffer `first` on.
    pub(super) fn rx_buffers(&mut self, first: u64, lens: &[u32]) -> &mut Self {
        for (i, len) in lens.iter().enumerate() {
            self.chain(RX, &[Desc::new(buf(first + i as u64), *len, WRITE)]);
        }
        self
    }

    /// A packet of a header and `frame` counting bytes arrives at the tap.
    pub(super) fn tap_packet(&mut self, frame: u16) -> &mut Self {
        self.seed.packet(NET_HDR_LEN as u16 + frame, &packet());
        self
    }

    /// A control command in one buffer, then its ack byte.
    pub(super) fn command(&mut self, bytes: &[u8]) -> &mut Self {
        self.chain(
            CTRL,
            &[
                Desc::new(buf(1), bytes.len() as u32, 0).fill(Fill::literal(bytes)),
                Desc::new(buf(2), 1, WRITE),
            ],
        )
    }

    pub(super) fn op(&mut self, op: u8) -> &mut Self {
        self.seed.op(op);
        self
    }

    pub(super) fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.seed.0)
    }
}

impl Build {
    pub(super) fn op_packet(&mut self, len: u16) -> &mut Self {
        self.seed.packet(len, &packet());
        self
    }

    /// The driver sets queue `q`'s avail index.
    pub(super) fn avail_idx(&mut self, q: usize, idx: u16) -> &mut Self {
        self.seed.u8(OP_AVAIL_IDX).u8(q as u8).u16(idx);
        self
    }

    /// The driver writes `bytes` at `gpa`.
    pub(super) fn poke(&mut self, gpa: u64, bytes: &[u8]) -> &mut Self {
        self.seed.u8(OP_POKE);
        write_addr(&mut self.seed, gpa);
        self.seed.u8(bytes.len() as u8).bytes(bytes);
        self
    }
}

/// Header, Ethernet (optionally one VLAN tag), IPv4 TCP 10.0.0.1:sport → 10.0.0.2:80.
pub(super) fn ipv4_tcp(sport: u16, vlan: bool) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1]);
    if vlan {
        f.extend_from_slice(&[0x81, 0, 0, 5]);
    }
    f.extend_from_slice(&[0x08, 0, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// Header, Ethernet, IPv6 UDP fd::1:5353 → fd::2:53.
pub(super) fn ipv6_udp() -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    for last in [1u8, 2] {
        f.extend_from_slice(&[0xfd; 15]);
        f.push(last);
    }
    f.extend_from_slice(&5353u16.to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&[0, 8, 0, 0]);
    f
}

/// A split descriptor's 16 bytes (for an indirect table).
pub(super) fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

/// The seeds' side of the operations of `queues.rs`.
pub(super) trait SeedOps {
    fn op(&mut self, op: u8) -> &mut Self;
    fn packet(&mut self, len: u16, fill: &Fill) -> &mut Self;
}

impl SeedOps for Seed {
    fn op(&mut self, op: u8) -> &mut Self {
        self.u8(op)
    }

    fn packet(&mut self, len: u16, fill: &Fill) -> &mut Self {
        self.u8(OP_PACKET).u16(len);
        fill.write(self);
        self
    }
}
