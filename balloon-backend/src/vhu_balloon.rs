//! `impl VhostUserBackend` for the balloon: features, config space (`num_pages` from the
//! target, `actual` written by the driver), and the queues — inflate and deflate (page frame
//! numbers), stats (one buffer the device holds until it wants fresh numbers) and free page
//! reporting (free ranges). All queues share one worker thread: the balloon is not a data
//! path, and one thread keeps the page bookkeeping without contention.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backends::descriptor_chain::{ChainBuffers, ChainError, OutOfOrder};
use backends::guest_memory::GuestMemoryHandle;
use backends::guest_memory::GuestMemoryMmap;
use backends::guest_memory::Vring;
use backends::lock_err;
use tracing::warn;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::pages::{self, Balloon, GuestBacking, Outcome};
use crate::state::{add, BalloonState};
use crate::virtio_balloon::*;

/// At most this many page frame numbers per inflate/deflate chain (Linux sends 256).
const MAX_PFNS: usize = 4096;

pub struct VhostUserBalloon {
    state: Arc<BalloonState>,
    features: u64,
    acked: AtomicU64,
    event_idx: AtomicBool,
    mem: GuestMemoryHandle,
    // Lock order: a vring's lock (`process` holds it while it works), then `balloon` or
    // `stats_buffer`; never a vring while `stats_buffer` is held (`ask_for_stats` takes the
    // buffer out first). The other order let a guest's stats kick and a `stats` request
    // deadlock each other.
    balloon: Mutex<Balloon>,
    /// The stats buffer the driver gave, held until fresh numbers are wanted.
    stats_buffer: Mutex<Option<(u16, Vring)>>,
    /// A DEVICE_STATE transfer in progress (`saved_state.rs`).
    transfer: backends::device_state::Transfer,
}

/// The bytes of a chain the driver fills and the device only reads (at most `max`).
fn readable_bytes<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    max: usize,
) -> Result<Vec<u8>, ChainError>
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    ChainBuffers::readable_only(chain)?.read_readable(mem, max)
}

impl VhostUserBalloon {
    pub fn new(state: Arc<BalloonState>, deflate_on_oom: bool, reporting: bool) -> Self {
        let mut features = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BALLOON_F_STATS_VQ
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | VhostUserVirtioFeatures::LOG_ALL.bits();
        if deflate_on_oom {
            features |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if reporting {
            features |= 1 << VIRTIO_BALLOON_F_FREE_PAGE_REPORTING;
        }
        VhostUserBalloon {
            state,
            features,
            acked: AtomicU64::new(0),
            event_idx: AtomicBool::new(false),
            mem: GuestMemoryHandle::new(),
            balloon: Mutex::new(Balloon::default()),
            stats_buffer: Mutex::new(None),
            transfer: Default::default(),
        }
    }

    /// Give the driver its stats buffer back so that it refills it; false if we hold none.
    pub fn ask_for_stats(&self) -> bool {
        // the buffer's lock is released before the vring is locked (the lock order above)
        let held = match self.stats_buffer.lock() {
            Ok(mut held) => held.take(),
            Err(_) => return false,
        };
        let Some((head, vring)) = held else {
            return false;
        };
        let Ok(atomic) = self.mem.get() else {
            return false;
        };
        let mem = atomic.memory();
        let mut state = vring.get_mut();
        let ok = state.get_queue_mut().add_used(&*mem, head, 0).is_ok();
        ok && state.signal_used_queue().is_ok()
    }

    /// Count (and at debug level, say) a chain that breaks the rules.
    fn malformed(&self, role: QueueRole, e: &ChainError) {
        tracing::debug!(?role, "malformed chain: {e}");
        add(&self.state.counters.malformed_chains, 1);
    }

    fn record(&self, out: Outcome) {
        let c = &self.state.counters;
        add(&c.released_bytes, out.released);
        add(&c.invalid, out.invalid);
        add(&c.duplicate, out.duplicate);
    }

    fn process(&self, role: QueueRole, vring: &Vring) -> io::Result<()> {
        let atomic = self.mem.get()?;
        let mem = atomic.memory();
        let backing = GuestBacking(&mem);
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let mut used = 0;
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            match role {
                QueueRole::Inflate | QueueRole::Deflate => {
                    match readable_bytes(chain, &mem, MAX_PFNS * 4) {
                        Ok(bytes) => {
                            let pfns: Vec<u32> = bytes
                                .chunks_exact(4)
                                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                                .collect();
                            let mut balloon = self.balloon.lock().map_err(lock_err)?;
                            let c = &self.state.counters;
                            if role == QueueRole::Inflate {
                                let out = balloon.inflate(&pfns, &backing);
                                add(&c.inflated_pages, out.pages);
                                self.record(out);
                            } else {
                                let out = balloon.deflate(&pfns, &backing);
                                add(&c.deflated_pages, out.pages);
                                self.record(out);
                            }
                        }
                        Err(e) => self.malformed(role, &e),
                    }
                }
                QueueRole::Stats => {
                    match readable_bytes(chain, &mem, 64 * 10) {
                        Ok(bytes) => self.state.stats_received(parse_stats(&bytes)),
                        Err(e) => self.malformed(role, &e),
                    }
                    // held until fresh numbers are wanted (see ask_for_stats)
                    *self.stats_buffer.lock().map_err(lock_err)? = Some((head, vring.clone()));
                    continue;
                }
                QueueRole::Reporting => {
                    // each device-readable buffer is one malformed piece, wherever it stands
                    match ChainBuffers::new(chain, OutOfOrder::Keep) {
                        Ok(bufs) => {
                            for b in bufs.buffers() {
                                if !b.writable {
                                    add(&self.state.counters.malformed_chains, 1);
                                    continue;
                                }
                                let out = pages::report(b.addr.0, u64::from(b.len), &backing);
                                add(&self.state.counters.reported_bytes, out.released);
                                self.record(out);
                            }
                        }
                        Err(e) => self.malformed(role, &e),
                    }
                }
            }
            backends::queue::return_chain(queue, &*mem, head, 0);
            used += 1;
        }
        if used > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBalloon {
    pub(crate) fn state(&self) -> &BalloonState {
        &self.state
    }

    /// The books of the pages in the balloon.
    pub(crate) fn pages(&self) -> std::io::Result<std::sync::MutexGuard<'_, Balloon>> {
        self.balloon
            .lock()
            .map_err(|_| std::io::Error::other("balloon lock poisoned"))
    }
}

impl VhostUserBackend for VhostUserBalloon {
    type Bitmap = backends::guest_memory::BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        queue_roles(self.features).len()
    }

    fn max_queue_size(&self) -> usize {
        256
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::DEVICE_STATE
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    backends::device_state_methods!(transfer);

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = config_bytes(
            self.state.num_pages.load(Ordering::Relaxed),
            self.state.actual.load(Ordering::Relaxed),
        );
        backends::config_space::read(&bytes, offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // the driver writes only `actual`
        if offset == ACTUAL_OFFSET && buf.len() == 4 {
            let actual = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            self.state.driver_wrote_actual(actual);
            tracing::info!(actual_pages = actual, "the guest's balloon changed");
        }
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let mut balloon = self.balloon.lock().map_err(lock_err)?;
        // a table the handle refuses (a region past the end of its file) ends the connection
        // before anything is counted or read
        self.mem.set(mem.clone())?;
        let ram: u64 = mem.memory().iter().map(|r| r.len()).sum();
        self.state.ram.store(ram, Ordering::Relaxed);
        // the pages in the balloon were the old table's; the bookkeeping grows with the pages
        // put in, so a region however high costs nothing until then
        *balloon = Balloon::new();
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![(1u64 << self.num_queues()) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        backends::worker::exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            warn!("unexpected event set {evset:?}");
            return Ok(());
        }
        // the guest numbers the queues from the features it took
        let roles = match self.acked.load(Ordering::Relaxed) {
            0 => queue_roles(self.features),
            acked => queue_roles(acked),
        };
        let (Some(role), Some(vring)) = (
            roles.get(usize::from(device_event)),
            vrings.get(usize::from(device_event)),
        ) else {
            warn!("event for unknown queue {device_event}");
            return Ok(());
        };
        backends::queue::drain(vring, self.event_idx.load(Ordering::Relaxed), || {
            self.process(*role, vring)
        })
    }
}
