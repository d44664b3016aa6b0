//! `impl VhostUserBackend` for the net device: features, config space, and the queue loops.
//! Queue layout as the spec's: receiveq/transmitq of pair N are queues 2N and 2N+1, the
//! control queue is last (2 × pairs). One worker thread per pair serves its two queues and
//! its tap queue's descriptor (registered edge-triggered); the control queue runs on pair 0's
//! thread.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use backends::guest_memory::GuestMemoryHandle;
use backends::guest_memory::GuestMemoryMmap;
use backends::guest_memory::Vring;
use backends::lock_err;
use tracing::{info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::ctrl::{self, Command};
use crate::flow::FlowTable;
use crate::rx::{self, RxQueue, Stop};
use crate::stats::{add, NetStats};
use crate::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};
use crate::tx::{self, Sent};
use crate::virtio_net::*;

/// Local vring indexes inside a pair's worker thread.
const RX: u16 = 0;
const TX: u16 = 1;
const CTRL: u16 = 2;

/// The vhost-user face of the net device, for one frontend connection.
pub struct VhostUserNet {
    pub(crate) tap: Arc<Tap>,
    pairs: usize,
    queue_size: usize,
    config: NetConfig,
    event_idx: AtomicBool,
    acked: AtomicU64,
    mem: GuestMemoryHandle,
    rx: Vec<Mutex<RxQueue>>,
    stats: Arc<NetStats>,
    /// Pairs the driver asked for on our control queue (all, until it asks).
    pub(crate) pairs_in_use: AtomicUsize,
    /// Whether each pair's tap queue is attached (gets packets from the kernel).
    attached: Vec<AtomicBool>,
    /// Which attached tap queue each flow the guest sends goes out on (all pairs share it).
    flows: FlowTable,
    /// Held while a tap queue is attached or detached (pair 0's thread on a control command,
    /// a pair's own thread when its rings change).
    attaching: Mutex<()>,
    /// A DEVICE_STATE transfer in progress (`saved_state.rs`).
    transfer: backends::device_state::Transfer,
}

impl VhostUserNet {
    pub fn new(tap: Arc<Tap>, config: NetConfig, queue_size: usize, stats: Arc<NetStats>) -> Self {
        let pairs = tap.queue_count();
        // a pair's tap queue is attached once its rings are enabled (see `sync_tap_queue`)
        for pair in 0..pairs {
            if let Err(e) = tap.set_queue_enabled(pair, pair == 0) {
                warn!("{}", backends::error_chain(&e));
            }
        }
        VhostUserNet {
            tap,
            pairs,
            queue_size,
            config,
            event_idx: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            mem: GuestMemoryHandle::new(),
            rx: (0..pairs).map(|_| Mutex::new(RxQueue::default())).collect(),
            stats,
            pairs_in_use: AtomicUsize::new(pairs),
            attached: (0..pairs).map(|p| AtomicBool::new(p == 0)).collect(),
            flows: FlowTable::default(),
            attaching: Mutex::new(()),
            transfer: Default::default(),
        }
    }

    /// The `device_event` of pair N's tap descriptor in worker N (above queues and exit).
    pub fn tap_event(&self) -> u64 {
        self.num_queues() as u64 + 1
    }

    /// Register each pair's tap descriptor with that pair's worker thread.
    pub fn attach_taps(&self, workers: &[Arc<VringEpollHandler<Arc<Self>>>]) -> io::Result<()> {
        for (pair, worker) in workers.iter().enumerate() {
            if let Some(fd) = self.tap.queue_fd(pair) {
                worker.register_listener(
                    fd,
                    EventSet::IN | EventSet::EDGE_TRIGGERED,
                    self.tap_event(),
                )?;
            }
        }
        Ok(())
    }

    fn mergeable(&self) -> bool {
        self.acked.load(Ordering::Relaxed) & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    /// Whether `pair`'s tap queue is attached (gets packets from the kernel, takes writes).
    fn is_attached(&self, pair: usize) -> bool {
        self.attached
            .get(pair)
            .is_some_and(|a| a.load(Ordering::Relaxed))
    }

    fn tap_fd(&self, pair: usize) -> io::Result<RawFd> {
        self.tap
            .queue_fd(pair)
            .ok_or_else(|| io::Error::other(format!("no tap queue for pair {pair}")))
    }

    /// Send everything the guest queued; with EVENT_IDX, tell it where to kick next and go
    /// round again if it added packets meanwhile.
    fn transmit_all(&self, pair: usize, vring: &Vring) -> io::Result<()> {
        if !vring.get_ref().get_queue().ready() {
            return Ok(());
        }
        backends::queue::drain(vring, self.event_idx.load(Ordering::Relaxed), || {
            self.transmit(pair, vring)
        })
    }

    /// Deliver what the tap has. Unlike transmit, the receive ring normally holds unused
    /// buffers, so "the guest added more" is no reason to go round again: the tap's readiness
    /// drives receive, and the guest's kick is only wanted once the buffers ran out.
    fn receive(&self, pair: usize, vring: &Vring) -> io::Result<()> {
        let fd = self.tap_fd(pair)?;
        let atomic = self.mem.get()?;
        let mem = atomic.memory();
        let mut rxq = self
            .rx
            .get(pair)
            .ok_or_else(|| io::Error::other("no rx queue"))?
            .lock()
            .map_err(lock_err)?;
        loop {
            let mut state = vring.get_mut();
            if !state.get_queue().ready() || !state.is_enabled() {
                return Ok(()); // packets wait in the tap until the guest sets up the ring
            }
            let queue = state.get_queue_mut();
            let (used, stop) = rxq.receive(queue, &mem, fd, self.mergeable(), &self.stats, pair)?;
            if used > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
                state.signal_used_queue()?;
            }
            if stop == Stop::TapEmpty {
                return Ok(());
            }
            // out of buffers: ask for a kick when the guest adds more; if it already did, go on
            let added = rx::wait_for_more_buffers(state.get_queue_mut(), &mem)?;
            if !added {
                tracing::trace!(pair, "receive ring full; packets wait in the tap");
                return Ok(());
            }
        }
    }

    fn transmit(&self, pair: usize, vring: &Vring) -> io::Result<()> {
        // a flow goes out on the one tap queue the flow table gave it among the attached ones
        // (a detached queue refuses writes with EBADFD; the first one is always attached), so
        // that the tap steers its answers to one queue; packets with no flow go out on the
        // pair's own
        let flows: Vec<RawFd> = if self.pairs > 1 {
            (0..self.pairs)
                .filter(|p| self.is_attached(*p))
                .filter_map(|p| self.tap.queue_fd(p))
                .collect()
        } else {
            Vec::new()
        };
        let queues = tx::TapQueues {
            own: self.tap_fd(if self.is_attached(pair) { pair } else { 0 })?,
            flows: &flows,
            table: &self.flows,
        };
        let atomic = self.mem.get()?;
        let mem = atomic.memory();
        let counters = &self.stats.pairs[pair];
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let mut used = 0;
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            match tx::transmit(chain, &mem, &queues) {
                Sent::Frame(n) => {
                    add(&counters.tx_packets, 1);
                    add(&counters.tx_bytes, n as u64);
                }
                Sent::Malformed(why) => {
                    add(&counters.tx_dropped, 1);
                    add(&self.stats.malformed_chains, 1);
                    tracing::debug!(pair, "dropped a transmit chain: {why}");
                }
                Sent::Refused => add(&counters.tx_dropped, 1),
            }
            backends::queue::return_chain(queue, &*mem, head, 0);
            used += 1;
        }
        if used > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }

    fn control(&self, vring: &Vring) -> io::Result<()> {
        let atomic = self.mem.get()?;
        let mem = atomic.memory();
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let mut used = 0;
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            add(&self.stats.ctrl_commands, 1);
            let (bytes, ack_addr) = match ctrl::read_command(chain, &mem) {
                Ok(command) => command,
                Err(e) => {
                    tracing::debug!("dropped a control chain: {}", backends::error_chain(&e));
                    add(&self.stats.malformed_chains, 1);
                    backends::queue::return_chain(queue, &*mem, head, 0);
                    used += 1;
                    continue;
                }
            };
            let ack = match ctrl::parse(&bytes) {
                Some(Command::SetPairs(n)) if ctrl::pairs_ok(n, self.pairs) => self.set_pairs(n),
                Some(Command::Accept) => CTRL_OK,
                other => {
                    tracing::debug!("control command refused: {other:?}");
                    CTRL_ERR
                }
            };
            let len = match mem.write_obj(ack, ack_addr) {
                Ok(()) => 1,
                Err(_) => 0,
            };
            backends::queue::return_chain(queue, &*mem, head, len);
            used += 1;
        }
        if used > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }

    pub(crate) fn config(&self) -> &NetConfig {
        &self.config
    }

    pub(crate) fn pairs(&self) -> usize {
        self.pairs
    }

    fn set_pairs(&self, n: u16) -> u8 {
        let n = usize::from(n);
        self.pairs_in_use.store(n, Ordering::Relaxed);
        for pair in 1..self.pairs {
            if let Err(e) = self.attach(pair, pair < n) {
                warn!("{}", backends::error_chain(&e));
                return CTRL_ERR;
            }
        }
        info!(pairs = n, "queue pairs in use");
        CTRL_OK
    }

    fn attach(&self, pair: usize, attach: bool) -> Result<(), crate::tap::TapError> {
        let Some(state) = self.attached.get(pair) else {
            return Ok(());
        };
        let _changing = self.attaching.lock().unwrap_or_else(|e| e.into_inner());
        if state.load(Ordering::Relaxed) != attach {
            self.tap.set_queue_enabled(pair, attach)?;
            state.store(attach, Ordering::Relaxed);
            tracing::debug!(pair, attach, "tap queue");
        }
        Ok(())
    }

    /// The kernel steers flows to a pair's tap queue only while the driver uses the pair:
    /// asked for on our control queue (our vmm) and its rings enabled (QEMU, which serves
    /// the control queue itself, disables the rings of unused pairs). Pair 0 always stays.
    fn sync_tap_queue(&self, pair: usize, vrings: &[Vring]) {
        if pair == 0 {
            return;
        }
        let enabled = vrings.iter().take(2).all(|v| {
            let state = v.get_ref();
            state.is_enabled() && state.get_queue().ready()
        });
        let want = enabled && pair < self.pairs_in_use.load(Ordering::Relaxed);
        if let Err(e) = self.attach(pair, want) {
            warn!("{}", backends::error_chain(&e));
        }
    }
}

impl VhostUserBackend for VhostUserNet {
    type Bitmap = backends::guest_memory::BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 * self.pairs + 1
    }

    fn max_queue_size(&self) -> usize {
        self.queue_size
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_ECN,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_CTRL_VQ,
            VIRTIO_NET_F_MQ,
        ]
        .iter()
        .fold(
            VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
                | VhostUserVirtioFeatures::LOG_ALL.bits(),
            |f, bit| f | 1u64 << bit,
        )
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
        // what the guest can take from the tap: checksum-less and GSO packets
        let has = |bit: u32| features & (1 << bit) != 0;
        let mut offload = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            offload |= TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                offload |= TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                offload |= TUN_F_TSO6;
            }
            if has(VIRTIO_NET_F_GUEST_ECN) && offload & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
                offload |= TUN_F_TSO_ECN;
            }
        }
        if let Err(e) = self.tap.set_offload(offload) {
            warn!("{}", backends::error_chain(&e));
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // no CONFIGURE_MEM_SLOTS: QEMU runs one vhost device per queue pair on the one
        // connection and each adds the same regions again, which the vhost crate refuses;
        // SET_MEM_TABLE (the whole table each time) is idempotent
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::DEVICE_STATE
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    backends::device_state_methods!(transfer);

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.read(offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem.set(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.pairs)
            .map(|p| {
                let mut mask = 0b11u64 << (2 * p);
                if p == 0 {
                    mask |= 1 << (2 * self.pairs); // the control queue
                }
                mask
            })
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        backends::worker::exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        pair: usize,
    ) -> io::Result<()> {
        backends::worker::recover(pair, || {
            if !evset.contains(EventSet::IN) {
                warn!("pair {pair}: unexpected event set {evset:?}");
                return Ok(());
            }
            self.sync_tap_queue(pair, vrings);
            let vring = |i: u16| {
                vrings
                    .get(usize::from(i))
                    .ok_or_else(|| io::Error::other(format!("pair {pair}: no vring {i}")))
            };
            match device_event {
                RX => self.receive(pair, vring(RX)?),
                TX => self.transmit_all(pair, vring(TX)?),
                CTRL if pair == 0 => {
                    // drained like transmit: with EVENT_IDX the driver kicks again only once it
                    // is told where (it sends one command at a time and spins until it is
                    // answered)
                    let ctrl = vring(CTRL)?;
                    backends::queue::drain(ctrl, self.event_idx.load(Ordering::Relaxed), || {
                        self.control(ctrl)
                    })
                }
                e if u64::from(e) == self.tap_event() => self.receive(pair, vring(RX)?),
                other => {
                    warn!("pair {pair}: event for unknown source {other}");
                    Ok(())
                }
            }
        })
    }
}
