//! The device's side of the queue harness, in two modes. Direct (this file): the receive,
//! transmit and control queues of pair 0 served by the crate's own code —
//! [`RxQueue::receive`] and [`rx::wait_for_more_buffers`], [`tx::transmit`],
//! [`ctrl::read_command`] / [`ctrl::parse`] / [`ctrl::pairs_ok`] — in loops that repeat
//! `vhu_net.rs`'s over the same calls, with every tap queue attached, so that transmit steers
//! flows among them. Device (`device.rs`, bit 5 of configuration byte 1): [`VhostUserNet`]
//! itself over a stand-in tap, kicked through its `handle_event`. Either way the tap is a
//! datagram socket pair per tap queue (`fake_tap.rs`): nothing reaches a network.
//!
//! Input: two configuration bytes, then operations until the input ends (at most
//! [`MAX_OPS`]).
//! - byte 0: bit 0 MRG_RXBUF, bit 1 EVENT_IDX, bits 2–3: tap queues − 1 (from 2 on, transmit
//!   steers flows among them);
//! - byte 1: bits 0–2: log2 of the queue size (1 to 128), bits 3–4: queue pairs − 1 (what
//!   VQ_PAIRS_SET may ask for; in device mode, the tap queues are the pairs), bit 5: device
//!   mode;
//! - an operation is a byte, `% 7`: 0 a chain (`queue: u8` % 3 — receive, transmit, control —
//!   `count: u8` → 1 + count % 16 descriptors, each as `driver.rs` says); 1 serve the receive
//!   queue, 2 the transmit queue, 3 the control queue; 4 a packet arrives at the tap (`len:
//!   u16`, 0xffff meaning one longer than any packet, and a fill); 5 the driver writes bytes
//!   anywhere (`driver.rs`); 6 the driver sets a queue's avail index (`queue: u8`, `idx: u16`).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use backends::fuzz_harness::guest_driver::read_fill;
use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::device::DeviceSide;
use super::driver::{self, Driver};
use super::fake_tap::FakeTap;
use super::input::{Input, Seed};
use crate::ctrl::{self, Command};
use crate::flow::FlowTable;
use crate::rx::{self, RxQueue, Stop};
use crate::stats::{add, NetStats};
use crate::tx::{self, Sent, TapQueues};
#[cfg(doc)]
use crate::vhu_net::VhostUserNet;
use crate::virtio_net::{CTRL_ERR, CTRL_OK, MAX_PACKET_LEN};

pub(super) const RX: usize = 0;
pub(super) const TX: usize = 1;
pub(super) const CTRL: usize = 2;

/// Operations one input runs at most.
pub(super) const MAX_OPS: usize = 64;
/// Passes of a drain loop (`backends::queue::drain`) before the harness gives up on it: with
/// the driver standing still, one pass, or two with EVENT_IDX, empty a queue. (With EVENT_IDX
/// and the driver's avail index more than a ring ahead, nothing can be popped: the real loop
/// stops after two passes that took nothing, this copy after [`DRAIN_PASSES`], counted as
/// `unsettled`.)
const DRAIN_PASSES: usize = 8;

pub(super) const OP_CHAIN: u8 = 0;
pub(super) const OP_RX: u8 = 1;
pub(super) const OP_TX: u8 = 2;
pub(super) const OP_CTRL: u8 = 3;
pub(super) const OP_PACKET: u8 = 4;
pub(super) const OP_POKE: u8 = 5;
pub(super) const OP_AVAIL_IDX: u8 = 6;
const OPS: u8 = 7;

/// In configuration byte 1: serve through the device itself (`device.rs`).
pub(super) const DEVICE_MODE: u8 = 0x20;

/// A packet length in the input meaning "longer than any packet" (the tap read cuts it).
pub(super) const OVERSIZED: u16 = u16::MAX;

/// The configuration bytes.
#[derive(Clone, Copy, Default)]
pub(super) struct Config {
    pub mergeable: bool,
    pub event_idx: bool,
    /// Tap queues, 1 to 4.
    pub taps: usize,
    /// log2 of the queue size.
    pub size_log2: u8,
    /// Queue pairs the device offers, 1 to 4.
    pub pairs: usize,
    /// Serve through the device itself (`device.rs`).
    pub device: bool,
}

impl Config {
    fn read(input: &mut Input) -> Config {
        let (a, b) = (input.u8(), input.u8());
        Config {
            mergeable: a & 1 != 0,
            event_idx: a & 2 != 0,
            taps: 1 + usize::from(a >> 2 & 3),
            size_log2: b & 7,
            pairs: 1 + usize::from(b >> 3 & 3),
            device: b & DEVICE_MODE != 0,
        }
    }

    pub(super) fn write(&self, seed: &mut Seed) {
        let taps = (self.taps.clamp(1, 4) - 1) as u8;
        seed.u8(u8::from(self.mergeable) | u8::from(self.event_idx) << 1 | taps << 2);
        let pairs = (self.pairs.clamp(1, 4) - 1) as u8;
        let device = if self.device { DEVICE_MODE } else { 0 };
        seed.u8(self.size_log2 & 7 | pairs << 3 | device);
    }
}

/// What one input did, for the tests to look at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Report {
    /// Used-ring entries added per queue (receive, transmit, control).
    pub used: [usize; 3],
    /// Packets the fake tap got from the guest (all its queues).
    pub tap_packets: usize,
    /// Packets delivered into the guest's receive buffers.
    pub rx_packets: u64,
    /// Control commands answered OK and ERR (direct mode).
    pub acks: [usize; 2],
    /// Queue pairs in use after the last VQ_PAIRS_SET (direct mode).
    pub pairs_in_use: usize,
    /// Malformed chains counted (receive, transmit, control).
    pub malformed: u64,
    /// Queue serving that failed (in the device, the pair's worker thread would stop).
    pub errors: usize,
    /// Drain loops still told "more chains" after [`DRAIN_PASSES`] passes (direct mode).
    pub unsettled: usize,
}

struct Harness {
    config: Config,
    driver: Driver,
    queues: [Queue; 3],
    tap: FakeTap,
    rx: RxQueue,
    flows: FlowTable,
    stats: Arc<NetStats>,
    device: Option<DeviceSide>,
    report: Report,
    scratch: Vec<u8>,
}

pub(super) fn run(data: &[u8]) -> Report {
    run_keeping_memory(data).0
}

/// [`run`], and the guest memory as the input left it.
pub(super) fn run_keeping_memory(data: &[u8]) -> (Report, Option<Driver>) {
    let mut input = Input::new(data);
    let config = Config::read(&mut input);
    let Some(mut h) = Harness::new(config) else {
        return (Report::default(), None);
    };
    input.run_ops(MAX_OPS, |input| h.step(input));
    h.finish()
}

impl Harness {
    fn new(config: Config) -> Option<Harness> {
        let (driver, mut queues) = driver::new(1 << config.size_log2)?;
        for q in &mut queues {
            q.set_event_idx(config.event_idx);
        }
        let taps = if config.device {
            config.pairs
        } else {
            config.taps
        };
        let tap = FakeTap::new(taps)?;
        let stats = Arc::new(NetStats::new(config.pairs));
        let device = if config.device {
            Some(DeviceSide::new(&driver, &tap.dev, config, stats.clone())?)
        } else {
            None
        };
        Some(Harness {
            tap,
            device,
            driver,
            queues,
            rx: RxQueue::default(),
            flows: FlowTable::default(),
            stats,
            report: Report {
                pairs_in_use: config.pairs,
                ..Report::default()
            },
            scratch: vec![0; MAX_PACKET_LEN + 256],
            config,
        })
    }

    fn step(&mut self, input: &mut Input) {
        let op = input.u8() % OPS;
        match op {
            OP_CHAIN => {
                let q = usize::from(input.u8() % 3);
                self.driver.add_chain(q, input);
            }
            OP_RX | OP_TX | OP_CTRL if self.device.is_some() => {
                let q = usize::from(op - OP_RX);
                if let Some(device) = &self.device {
                    device.kick(q, &mut self.report);
                }
                self.report.tap_packets += self.tap.drain(&mut self.scratch);
            }
            OP_RX => self.receive(),
            OP_TX => self.drain(TX),
            OP_CTRL => self.drain(CTRL),
            OP_PACKET => self.packet(input),
            OP_POKE => self.driver.poke(input),
            _ => {
                let q = usize::from(input.u8() % 3);
                self.driver.set_avail_idx(q, input.u16());
            }
        }
    }

    fn finish(mut self) -> (Report, Option<Driver>) {
        let p = &self.stats.pairs[0];
        self.report.rx_packets = p.rx_packets.load(Ordering::Relaxed);
        self.report.malformed = self.stats.malformed_chains.load(Ordering::Relaxed);
        if let Some(device) = &self.device {
            self.report.used = device.used();
        }
        (self.report, Some(self.driver))
    }

    /// A packet from the "kernel": header and frame, `len` bytes as the fill says.
    fn packet(&mut self, input: &mut Input) {
        let len = match input.u16() {
            OVERSIZED => MAX_PACKET_LEN + 100,
            n => usize::from(n),
        };
        let mut pkt = read_fill(input, len);
        pkt.resize(len, 0);
        // a full socket drops it, as a tap queue that is not read drops packets
        if self.tap.host[0].send(&pkt).is_ok() {
            if let Some(device) = &self.device {
                device.tap_ready(&mut self.report);
            }
        }
    }

    /// `vhu_net.rs`'s `receive`: deliver until the tap is empty or the buffers run out, then
    /// arm the kick past the buffers the guest has posted.
    fn receive(&mut self) {
        let fd = self.tap.dev[0].as_raw_fd();
        let mem = &self.driver.mem;
        let queue = &mut self.queues[RX];
        for _ in 0..DRAIN_PASSES {
            let got = self
                .rx
                .receive(queue, mem, fd, self.config.mergeable, &self.stats, 0);
            let Ok((used, stop)) = got else {
                self.report.errors += 1;
                return;
            };
            self.report.used[RX] += used;
            if used > 0 {
                let _ = queue.needs_notification(mem);
            }
            if stop == Stop::TapEmpty {
                return;
            }
            match rx::wait_for_more_buffers(queue, mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(_) => {
                    self.report.errors += 1;
                    return;
                }
            }
        }
        self.report.unsettled += 1;
    }

    /// `backends::queue::drain` around `vhu_net.rs`'s `transmit` or `control`.
    fn drain(&mut self, q: usize) {
        for _ in 0..DRAIN_PASSES {
            let mem = &self.driver.mem;
            if self.config.event_idx && self.queues[q].disable_notification(mem).is_err() {
                self.report.errors += 1;
                return;
            }
            let served = match q {
                TX => self.transmit(),
                _ => self.control(),
            };
            if served.is_err() {
                self.report.errors += 1;
                return;
            }
            if !self.config.event_idx {
                return;
            }
            match self.queues[q].enable_notification(&self.driver.mem) {
                Ok(false) => return,
                Ok(true) => continue,
                Err(_) => {
                    self.report.errors += 1;
                    return;
                }
            }
        }
        self.report.unsettled += 1;
    }

    /// `vhu_net.rs`'s `transmit`, with every tap queue attached.
    fn transmit(&mut self) -> Result<(), virtio_queue::Error> {
        let fds: Vec<RawFd> = self.tap.dev.iter().map(AsRawFd::as_raw_fd).collect();
        let taps = TapQueues {
            own: fds[0],
            flows: if fds.len() > 1 { &fds } else { &[] },
            table: &self.flows,
        };
        let mem = &self.driver.mem;
        let queue = &mut self.queues[TX];
        let counters = &self.stats.pairs[0];
        let (mut result, mut used) = (Ok(()), 0);
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match tx::transmit(chain, mem, &taps) {
                Sent::Frame(n) => {
                    add(&counters.tx_packets, 1);
                    add(&counters.tx_bytes, n as u64);
                }
                Sent::Malformed(_) => {
                    add(&counters.tx_dropped, 1);
                    add(&self.stats.malformed_chains, 1);
                }
                Sent::Refused => add(&counters.tx_dropped, 1),
            }
            result = queue.add_used(mem, head, 0);
            if result.is_err() {
                break;
            }
            used += 1;
        }
        if used > 0 {
            let _ = queue.needs_notification(mem);
        }
        self.report.used[TX] += used;
        self.report.tap_packets += self.tap.drain(&mut self.scratch);
        result
    }

    /// `vhu_net.rs`'s `control`; VQ_PAIRS_SET records the pairs in use (the device also
    /// attaches and detaches tap queues, which needs a real tap).
    fn control(&mut self) -> Result<(), virtio_queue::Error> {
        let mem: &GuestMemoryMmap = &self.driver.mem;
        let queue = &mut self.queues[CTRL];
        let mut used = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            add(&self.stats.ctrl_commands, 1);
            let (bytes, ack_addr) = match ctrl::read_command(chain, mem) {
                Ok(command) => command,
                Err(_) => {
                    add(&self.stats.malformed_chains, 1);
                    queue.add_used(mem, head, 0)?;
                    self.report.used[CTRL] += 1;
                    used += 1;
                    continue;
                }
            };
            let ack = match ctrl::parse(&bytes) {
                Some(Command::SetPairs(n)) if ctrl::pairs_ok(n, self.config.pairs) => {
                    self.report.pairs_in_use = usize::from(n);
                    CTRL_OK
                }
                Some(Command::Accept) => CTRL_OK,
                _ => CTRL_ERR,
            };
            self.report.acks[usize::from(ack != CTRL_OK)] += 1;
            let len = u32::from(mem.write_obj(ack, ack_addr).is_ok());
            queue.add_used(mem, head, len)?;
            self.report.used[CTRL] += 1;
            used += 1;
        }
        if used > 0 {
            let _ = queue.needs_notification(mem);
        }
        Ok(())
    }
}
