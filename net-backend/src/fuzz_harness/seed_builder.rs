//! Building the seeds: a configuration, then operations, in the input format of `queues.rs`
//! and `driver.rs`; and the frames the transmit seeds send.

use backends::fuzz_harness::driver_seed::{Desc, DriverSeed, Fill};
use backends::fuzz_harness::guest_driver::WRITE;

use super::driver::{self, DATA};
use super::queues::{Config, CTRL, OP_PACKET, RX};
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

/// A seed for `config`: its configuration bytes, operations to follow.
pub(super) fn build(config: Config) -> DriverSeed {
    let mut b = driver::seed();
    config.write(&mut b.seed);
    b
}

/// The seeds' side of this harness's own operations and of the chains its queues take.
pub(super) trait NetSeed {
    /// A receive chain per length, one writable buffer each, from buffer `first` on.
    fn rx_buffers(&mut self, first: u64, lens: &[u32]) -> &mut Self;
    /// A packet of a header and `frame` counting bytes arrives at the tap.
    fn tap_packet(&mut self, frame: u16) -> &mut Self;
    /// A packet of `len` bytes, a header and counting bytes, arrives at the tap.
    fn op_packet(&mut self, len: u16) -> &mut Self;
    /// A control command in one buffer, then its ack byte.
    fn command(&mut self, bytes: &[u8]) -> &mut Self;
}

impl NetSeed for DriverSeed {
    fn rx_buffers(&mut self, first: u64, lens: &[u32]) -> &mut Self {
        for (i, len) in lens.iter().enumerate() {
            self.chain(RX, &[Desc::new(buf(first + i as u64), *len, WRITE)]);
        }
        self
    }

    fn tap_packet(&mut self, frame: u16) -> &mut Self {
        self.op_packet(NET_HDR_LEN as u16 + frame)
    }

    fn op_packet(&mut self, len: u16) -> &mut Self {
        self.seed.u8(OP_PACKET).u16(len);
        packet().write(&mut self.seed);
        self
    }

    fn command(&mut self, bytes: &[u8]) -> &mut Self {
        self.chain(
            CTRL,
            &[
                Desc::new(buf(1), bytes.len() as u32, 0).fill(Fill::literal(bytes)),
                Desc::new(buf(2), 1, WRITE),
            ],
        )
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
