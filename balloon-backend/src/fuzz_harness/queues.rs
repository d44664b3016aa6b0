//! The device's side of the queue harness: [`VhostUserBalloon`] itself, its queues as
//! vhost-user-backend's vrings over the driver's rings, kicked through `handle_event` as its
//! worker thread does (inflate and deflate into `pages.rs` and the memfd, the stats buffer
//! held and given back, free page reporting), and `ask_for_stats` as the control socket calls
//! it.
//!
//! Input: two configuration bytes, then operations until the input ends (at most
//! [`MAX_OPS`]).
//! - byte 0: bit 0 DEFLATE_ON_OOM offered, bit 1 FREE_PAGE_REPORTING offered, bit 2 EVENT_IDX;
//!   bit 7: the rest is `huge_pages.rs`'s input instead;
//! - byte 1: bits 0–2: log2 of the queue size (1 to 128);
//! - an operation is a byte, `% 7`: 0 a chain (`ring: u8` % 4, `count: u8` → 1 + count % 16
//!   descriptors, each as `driver.rs` says); 1 a kick (`queue: u8` % 6, unknown queues
//!   included); 2 a `stats` request; 3 the driver acks features (`bits: u8`: 0 STATS_VQ,
//!   1 DEFLATE_ON_OOM, 2 FREE_PAGE_REPORTING; VERSION_1 always); 4 the driver writes bytes
//!   anywhere (`driver.rs`); 5 the driver sets a ring's avail index (`ring: u8`, `idx: u16`);
//!   6 the frontend sends the memory table again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use backends::guest_memory::GuestMemoryMmap;
use backends::guest_memory::Vring;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;

use super::driver::{self, Driver, RINGS};
use super::input::{Input, Seed};
use crate::state::BalloonState;
use crate::vhu_balloon::VhostUserBalloon;
use crate::virtio_balloon::*;

/// Operations one input runs at most.
pub(super) const MAX_OPS: usize = 64;

pub(super) const OP_CHAIN: u8 = 0;
pub(super) const OP_KICK: u8 = 1;
pub(super) const OP_ASK_STATS: u8 = 2;
pub(super) const OP_ACK: u8 = 3;
pub(super) const OP_POKE: u8 = 4;
pub(super) const OP_AVAIL_IDX: u8 = 5;
pub(super) const OP_MEM_TABLE: u8 = 6;
const OPS: u8 = 7;

/// In configuration byte 0: the input is for `huge_pages.rs`.
pub(super) const PAGES_MODE: u8 = 0x80;

/// The configuration bytes.
#[derive(Clone, Copy, Default)]
pub(super) struct Config {
    pub deflate_on_oom: bool,
    pub reporting: bool,
    pub event_idx: bool,
    /// log2 of the queue size.
    pub size_log2: u8,
}

impl Config {
    fn read(a: u8, b: u8) -> Config {
        Config {
            deflate_on_oom: a & 1 != 0,
            reporting: a & 2 != 0,
            event_idx: a & 4 != 0,
            size_log2: b & 7,
        }
    }

    pub(super) fn write(&self, seed: &mut Seed) {
        let a = u8::from(self.deflate_on_oom)
            | u8::from(self.reporting) << 1
            | u8::from(self.event_idx) << 2;
        seed.u8(a).u8(self.size_log2 & 7);
    }
}

/// What one input did, for the tests to look at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Report {
    /// Used-ring entries added per queue (mod 2^16).
    pub used: [u16; 4],
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    pub released_bytes: u64,
    pub reported_bytes: u64,
    pub invalid: u64,
    pub duplicate: u64,
    pub malformed: u64,
    /// `stats` requests that gave the driver its buffer back.
    pub stats_given_back: usize,
    /// Kicks whose handling failed (the device's worker thread would stop).
    pub errors: usize,
}

struct Harness {
    driver: Driver,
    memory: GuestMemoryAtomic<GuestMemoryMmap>,
    state: Arc<BalloonState>,
    device: VhostUserBalloon,
    vrings: Vec<Vring>,
    report: Report,
}

pub(super) fn run(data: &[u8]) -> Report {
    run_keeping_memory(data).0
}

/// [`run`], and the guest memory as the input left it.
pub(super) fn run_keeping_memory(data: &[u8]) -> (Report, Option<Driver>) {
    let mut input = Input::new(data);
    let (a, b) = (input.u8(), input.u8());
    if a & PAGES_MODE != 0 {
        super::huge_pages::run(b, &mut input);
        return (Report::default(), None);
    }
    let Some(mut h) = Harness::new(Config::read(a, b)) else {
        return (Report::default(), None);
    };
    input.run_ops(MAX_OPS, |input| h.step(input));
    h.finish()
}

impl Harness {
    fn new(config: Config) -> Option<Harness> {
        let driver = driver::new(1 << config.size_log2)?;
        let memory = GuestMemoryAtomic::new(driver.mem.clone());
        let state = Arc::new(BalloonState::default());
        let device = VhostUserBalloon::new(state.clone(), config.deflate_on_oom, config.reporting);
        device.update_memory(memory.clone()).ok()?;
        device.set_event_idx(config.event_idx);
        let vrings = driver.vrings(&memory, device.num_queues(), config.event_idx)?;
        Some(Harness {
            driver,
            memory,
            state,
            device,
            vrings,
            report: Report::default(),
        })
    }

    fn step(&mut self, input: &mut Input) {
        match input.u8() % OPS {
            OP_CHAIN => {
                let ring = usize::from(input.u8()) % RINGS.len();
                self.driver.add_chain(ring, input);
            }
            OP_KICK => self.kick(u16::from(input.u8() % 6)),
            OP_ASK_STATS => {
                self.report.stats_given_back += usize::from(self.device.ask_for_stats());
            }
            OP_ACK => {
                let bits = input.u8();
                let mut features = 1 << VIRTIO_F_VERSION_1;
                for (bit, feature) in [
                    VIRTIO_BALLOON_F_STATS_VQ,
                    VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
                    VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
                ]
                .into_iter()
                .enumerate()
                {
                    if bits & 1 << bit != 0 {
                        features |= 1 << feature;
                    }
                }
                self.device.acked_features(features);
            }
            OP_POKE => self.driver.poke(input),
            OP_AVAIL_IDX => {
                let ring = usize::from(input.u8()) % RINGS.len();
                self.driver.set_avail_idx(ring, input.u16());
            }
            _ => {
                if self.device.update_memory(self.memory.clone()).is_err() {
                    self.report.errors += 1;
                }
            }
        }
    }

    /// What the worker thread does when queue `event`'s kick (or an unknown event) fires.
    fn kick(&mut self, event: u16) {
        if self
            .device
            .handle_event(event, EventSet::IN, &self.vrings, 0)
            .is_err()
        {
            self.report.errors += 1;
        }
    }

    fn finish(mut self) -> (Report, Option<Driver>) {
        for (used, vring) in self.report.used.iter_mut().zip(&self.vrings) {
            *used = vring.get_ref().get_queue().next_used();
        }
        let c = &self.state.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.report.inflated_pages = get(&c.inflated_pages);
        self.report.deflated_pages = get(&c.deflated_pages);
        self.report.released_bytes = get(&c.released_bytes);
        self.report.reported_bytes = get(&c.reported_bytes);
        self.report.invalid = get(&c.invalid);
        self.report.duplicate = get(&c.duplicate);
        self.report.malformed = get(&c.malformed_chains);
        (self.report, Some(self.driver))
    }
}
