//! Harness: the vhost-user message stream into the net backend, over a socketpair, served by
//! the handler stack of the serve loop (input format, descriptors and limits in
//! `backends::fuzz_harness`). The device is `start_backend`'s, over a stand-in tap: one
//! datagram socket pair per queue pair (as `queue_tests.rs` does), so nothing reaches a network
//! and the tap's own settings fail harmlessly. The setup byte's bits 1-7 choose it: bits 1-2
//! queue pairs − 1, bit 3 a queue size of 64 (else 256), bit 4 an MTU of 9000 (else 1500),
//! bit 5 a packet already waits in the tap (so receive runs when a ring starts).

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use backends::fuzz_harness::{self as harness, Device, Message, Outcome};
use backends::serve::BackendFactory;
use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};

use crate::tap::Tap;
use crate::virtio_net::{NetConfig, NET_HDR_LEN};
use crate::NetFactory;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Run one input (see the module documentation).
pub fn messages(data: &[u8]) {
    harness::expect_set_up(run(data));
}

/// The device the setup byte chooses.
#[derive(Debug, Clone, Copy)]
struct Setup {
    pairs: usize,
    queue_size: usize,
    jumbo: bool,
    packet_waiting: bool,
}

impl Setup {
    fn from_byte(b: u8) -> Setup {
        Setup {
            pairs: 1 + usize::from(b >> 1 & 3),
            queue_size: if b & 1 << 3 != 0 { 64 } else { 256 },
            jumbo: b & 1 << 4 != 0,
            packet_waiting: b & 1 << 5 != 0,
        }
    }

    fn byte(&self) -> u8 {
        ((self.pairs - 1) as u8) << 1
            | u8::from(self.queue_size == 64) << 3
            | u8::from(self.jumbo) << 4
            | u8::from(self.packet_waiting) << 5
    }
}

/// The serve loop's factory as `start_backend` makes it, over a stand-in tap, and the host's
/// ends of the tap (to keep while the device runs).
fn factory(setup: Setup) -> io::Result<(NetFactory, Vec<UnixDatagram>)> {
    let mut host = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..setup.pairs {
        let (ours, device) = UnixDatagram::pair()?;
        device.set_nonblocking(true)?;
        if setup.packet_waiting {
            let mut packet = vec![0u8; NET_HDR_LEN + 60];
            packet[NET_HDR_LEN..NET_HDR_LEN + 6].copy_from_slice(&[0xff; 6]);
            ours.send(&packet)?;
        }
        host.push(ours);
        queues.push(File::from(OwnedFd::from(device)));
    }
    let mtu = if setup.jumbo { 9000 } else { 1500 };
    let tap = Tap::stand_in(queues);
    Ok((NetFactory::new(tap, MAC, mtu, setup.queue_size), host))
}

/// Run one input and say what it did.
pub fn run(data: &[u8]) -> io::Result<Outcome> {
    let setup = Setup::from_byte(data.first().copied().unwrap_or(0));
    let (factory, _host) = factory(setup)?;
    harness::drive("splitvisor-net", factory, data)
}

/// What the seeds need to know of the device `setup` makes.
fn device(setup: Setup) -> io::Result<Device> {
    let vu = factory(setup)?.0.create()?;
    Ok(Device::of(&vu, setup.byte(), NetConfig::LEN))
}

/// QEMU's start of a vhost-user-net device (7.2 and later): pair 0's rings enabled as soon as
/// the guest writes its features, before SET_FEATURES, and not again at the start; every
/// request with NEED_REPLY. The relay holds those enables until SET_FEATURES (`relay.rs`).
fn qemu_start(d: &Device) -> Vec<Message> {
    use FrontendReq as R;
    let protocol = d.acked_protocol() - VhostUserProtocolFeatures::BACKEND_REQ;
    let mut m = d.negotiate(protocol, true);
    m.push(Message::new(R::GET_QUEUE_NUM, []));
    for q in 0..2 {
        let enable = harness::vring_state(q, 1);
        m.push(Message::new(R::SET_VRING_ENABLE, enable).need_reply());
    }
    m.push(Message::new(R::SET_FEATURES, harness::u64_body(d.features)).need_reply());
    let table = harness::mem_table(&[harness::region(0, harness::GUEST_RAM)]);
    m.push(Message::new(R::SET_MEM_TABLE, table).need_reply());
    for q in 0..2 {
        m.extend(d.ring(q)[..5].iter().map(|r| r.clone().need_reply()));
    }
    m
}

/// The seeds: every backend's (one pair), the vmm's start and stop of two and four pairs,
/// small rings, a jumbo MTU, a packet waiting in the tap, and QEMU's early ring enable (which
/// only the relay lets through).
pub fn messages_seeds() -> Vec<(String, Vec<u8>)> {
    let base = Setup::from_byte(0);
    let variants = [
        ("mq-2-pairs", Setup { pairs: 2, ..base }),
        ("mq-4-pairs", Setup { pairs: 4, ..base }),
        (
            "queue-size-64",
            Setup {
                queue_size: 64,
                ..base
            },
        ),
        (
            "jumbo-mtu",
            Setup {
                jumbo: true,
                ..base
            },
        ),
        (
            "packet-waiting",
            Setup {
                packet_waiting: true,
                pairs: 2,
                ..base
            },
        ),
    ];
    let Some((one, mut seeds)) = harness::backend_seeds(base, &variants, device) else {
        return Vec::new();
    };
    let qemu = [qemu_start(&one), one.stop()].concat();
    seeds.push(one.seed("qemu-early-enable", true, &qemu));
    seeds.push(one.seed("broken-early-enable-direct", false, &qemu));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::fuzz_harness::backend_checks::{check_vmm_start, serial, vmm_start_seeds};

    backends::vhost_user_harness_tests!("net", messages_seeds, run);

    #[test]
    fn the_vmm_start_negotiates_the_net_device() {
        let _serial = serial();
        for (name, data) in vmm_start_seeds(messages_seeds()) {
            let setup = Setup::from_byte(data[0]);
            let d = device(setup).unwrap();
            // two queues per pair and the control queue
            assert_eq!(d.queues as usize, 2 * setup.pairs + 1, "{name}");
            let out = run(&data).unwrap();
            let config = check_vmm_start(&name, &out, &d);
            assert_eq!(config[..6], MAC, "{name}");
            assert_eq!(config[8..10], (setup.pairs as u16).to_le_bytes(), "{name}");
            assert_eq!(out.swept, setup.pairs, "{name}: one exit event per worker");
        }
    }

    #[test]
    fn qemu_enables_rings_early_only_through_the_relay() {
        let _serial = serial();
        let seeds = messages_seeds();
        let find = |n: &str| seeds.iter().find(|(name, _)| name == n).map(|(_, d)| d);
        let relayed = run(find("qemu-early-enable").unwrap()).unwrap();
        assert!(relayed.completed, "{relayed:?}");
        // the relay acked both early enables itself, then the handler every other request
        let enables = relayed.replies_to(FrontendReq::SET_VRING_ENABLE);
        assert_eq!(enables.len(), 2);
        assert!(enables.iter().all(|r| r.u64() == Some(0)));
        assert_eq!(relayed.replies_to(FrontendReq::GET_VRING_BASE).len(), 3);
        let direct = run(find("broken-early-enable-direct").unwrap()).unwrap();
        assert!(!direct.completed, "{direct:?}");
        let ended = direct.ended.unwrap_or_default();
        assert!(ended.contains("inactive feature"), "{ended}");
    }
}
