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
use std::sync::Arc;

use backends::fuzz_harness::{self as harness, Device, Message, Outcome};
use backends::serve::BackendFactory;
use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};

use crate::stats::NetStats;
use crate::tap::Tap;
use crate::vhu_net::VhostUserNet;
use crate::virtio_net::{NetConfig, NET_HDR_LEN, VIRTIO_NET_S_LINK_UP};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Run one input (see the module documentation).
pub fn messages(data: &[u8]) {
    if let Err(e) = run(data) {
        panic!("the vhost-user harness could not set up (not the input's doing): {e}");
    }
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

/// The serve loop's factory as `lib.rs` makes it (`NetFactory` and `start_backend`), and the
/// host's ends of the stand-in tap.
struct Factory {
    tap: Arc<Tap>,
    config: NetConfig,
    queue_size: usize,
    stats: Arc<NetStats>,
    _host: Vec<UnixDatagram>,
}

impl Factory {
    fn new(setup: Setup) -> io::Result<Factory> {
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
        let tap = Tap::stand_in(queues);
        let config = NetConfig {
            mac: MAC,
            status: VIRTIO_NET_S_LINK_UP,
            max_virtqueue_pairs: tap.queue_count() as u16,
            mtu: if setup.jumbo { 9000 } else { 1500 },
        };
        Ok(Factory {
            stats: Arc::new(NetStats::new(tap.queue_count())),
            tap: Arc::new(tap),
            config,
            queue_size: setup.queue_size,
            _host: host,
        })
    }
}

impl BackendFactory for Factory {
    type Backend = Arc<VhostUserNet>;

    fn create(&mut self) -> io::Result<Self::Backend> {
        Ok(Arc::new(VhostUserNet::new(
            self.tap.clone(),
            self.config.clone(),
            self.queue_size,
            self.stats.clone(),
        )))
    }

    fn attach(
        &mut self,
        backend: &Self::Backend,
        workers: &[Arc<VringEpollHandler<Self::Backend>>],
    ) -> io::Result<()> {
        backend.attach_taps(workers)
    }
}

/// Run one input and say what it did.
pub fn run(data: &[u8]) -> io::Result<Outcome> {
    let setup = Setup::from_byte(data.first().copied().unwrap_or(0));
    harness::drive("splitvisor-net", Factory::new(setup)?, data)
}

/// What the seeds need to know of the device `setup` makes.
fn device(setup: Setup) -> io::Result<Device> {
    let vu = Factory::new(setup)?.create()?;
    Ok(Device {
        setup: setup.byte(),
        features: vu.features(),
        protocol: vu.protocol_features(),
        queues: vu.num_queues() as u32,
        queue_size: setup.queue_size as u32,
        config_size: NetConfig::LEN as u32,
    })
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
    let Ok(one) = device(base) else {
        return Vec::new();
    };
    let mut seeds = one.seeds();
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
    for (name, setup) in variants {
        if let Ok(d) = device(setup) {
            let life = [d.start(false), d.stop()].concat();
            seeds.push(d.seed(&format!("vmm-start-stop-{name}"), true, &life));
        }
    }
    let qemu = [qemu_start(&one), one.stop()].concat();
    seeds.push(one.seed("qemu-early-enable", true, &qemu));
    seeds.push(one.seed("broken-early-enable-direct", false, &qemu));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::fuzz_harness::{mutations, Footprint};
    use std::sync::Mutex;
    use std::time::Instant;

    /// Tests that count threads and descriptors run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn every_seed_runs_and_only_the_broken_ones_end_early() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let seeds = messages_seeds();
        assert!(seeds.len() > 30);
        for (name, data) in seeds {
            let out = run(&data).unwrap();
            assert!(out.sent >= harness::decode(&data).messages.len(), "{name}");
            assert_eq!(
                out.completed,
                !name.starts_with("broken-"),
                "{name}: {out:?}"
            );
        }
    }

    #[test]
    fn the_vmm_start_negotiates_the_net_device() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for (name, data) in messages_seeds() {
            if !name.starts_with("vmm-start-stop") {
                continue;
            }
            let setup = Setup::from_byte(data[0]);
            let d = device(setup).unwrap();
            let out = run(&data).unwrap();
            assert!(out.completed && out.ended.is_none(), "{name}: {out:?}");
            let features = out.replies_to(FrontendReq::GET_FEATURES)[0].u64();
            assert_eq!(features, Some(d.features), "{name}");
            // two queues per pair and the control queue
            let queues = out.replies_to(FrontendReq::GET_QUEUE_NUM)[0].u64();
            assert_eq!(queues, Some(2 * setup.pairs as u64 + 1), "{name}");
            let config = &out.replies_to(FrontendReq::GET_CONFIG)[0].body[12..];
            assert_eq!(config[..6], MAC, "{name}");
            assert_eq!(config[8..10], (setup.pairs as u16).to_le_bytes(), "{name}");
            let bases = out.replies_to(FrontendReq::GET_VRING_BASE);
            assert_eq!(bases.len(), 2 * setup.pairs + 1, "{name}");
            assert_eq!(out.swept, setup.pairs, "{name}: one exit event per worker");
        }
    }

    #[test]
    fn qemu_enables_rings_early_only_through_the_relay() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

    #[test]
    fn two_hundred_inputs_leave_no_thread_and_no_descriptor_behind() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let inputs = mutations(&messages_seeds(), 200);
        messages(&inputs[0]);
        let before = Footprint::now();
        let started = Instant::now();
        for data in &inputs {
            messages(data);
        }
        let elapsed = started.elapsed();
        let after = before.settled_after();
        eprintln!("net, 200 inputs in {elapsed:?}: {before:?} -> {after:?}");
        assert!(
            after.threads <= before.threads + 4,
            "{before:?} -> {after:?}"
        );
        assert!(after.fds <= before.fds + 8, "{before:?} -> {after:?}");
    }
}
