//! `impl VhostUserBackend` for the block device: features, config space, and the queue loop.
//! Each queue has its own io_uring for raw images. Queues are spread over at most one worker
//! thread per CPU (vhost-user-backend runs one epoll loop per thread): queue `q` is served by
//! thread `q % threads`, so with more queues than CPUs one wake-up serves every kicked queue of
//! a thread instead of each queue's thread being switched in for its one request.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use backends::guest_memory::GuestMemoryHandle;
use backends::guest_memory::GuestMemoryMmap;
use backends::guest_memory::Vring;
use backends::inflight::{InflightSlot, Recovery, Tracker};
use backends::saved_chain::SavedChain;
use tracing::{info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::blk::{BlkDevice, Start};
use crate::uring::{Completed, UringQueue};
use crate::virtio_blk::*;

/// The vhost-user face of one block device, for one frontend connection.
pub struct VhostUserBlk {
    device: Arc<BlkDevice>,
    config: BlkConfig,
    num_queues: usize,
    /// Worker threads serving the queues (`--threads`, by default [`default_threads`]).
    threads: usize,
    queue_size: usize,
    event_idx: AtomicBool,
    mem: GuestMemoryHandle,
    /// Per queue: its io_uring (when the disk allows asynchronous I/O) and its vring (known
    /// from the first event, needed to complete requests when the ring is stopped).
    queues: Vec<Mutex<QueueState>>,
    /// The inflight region the frontend gave this connection (INFLIGHT_SHMFD).
    inflight: InflightSlot,
    /// A DEVICE_STATE transfer in progress (`saved_state.rs`).
    transfer: backends::device_state::Transfer,
    /// Under `--sched auto`: each worker sets its own policy from the depth the guest keeps
    /// (`backends::sched::follow_depth`).
    follow_depth: bool,
}

struct QueueState {
    uring: Option<UringQueue>,
    vring: Option<Vring>,
    /// Where this queue's requests are tracked in the inflight region, if there is one.
    tracker: Option<Tracker>,
    /// The region generation the queue took over last (0: none yet).
    generation: u64,
}

/// Put finished requests in the used ring, each in the publish order of the inflight region
/// (`tracker`); returns how many.
fn give_back(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    done: &[Completed],
    tracker: Option<&Tracker>,
) -> usize {
    for c in done {
        if let Some(t) = tracker {
            t.publishing(c.head);
        }
        backends::queue::return_chain(queue, mem, c.head, c.len);
        if let Some(t) = tracker {
            t.published(c.head, queue.next_used());
        }
    }
    done.len()
}

/// The `device_event` of queue `queue`'s io_uring completions (above the thread's vrings and
/// the exit event, which take `0..=num_queues`).
pub fn completion_event(num_queues: usize, queue: usize) -> u16 {
    (num_queues + 1 + queue) as u16
}

/// The queue whose io_uring a `device_event` from [`completion_event`] names, if it is one.
fn completion_queue(num_queues: usize, device_event: usize) -> Option<usize> {
    device_event
        .checked_sub(num_queues + 1)
        .filter(|q| *q < num_queues)
}

/// How many worker threads serve `num_queues` queues by default: one per queue, but no more
/// than the CPUs. (Measured on 2 CPUs with 4 queues, 4 KiB QD1 from a memory-backed file:
/// 2 threads 65-83 k IOPS, 4 threads 40-61 k — every extra thread is one more switch per
/// request.)
pub fn default_threads(num_queues: usize) -> usize {
    num_queues.min(cpus()).max(1)
}

/// The CPUs this process may use, counted once (at start, before the file rules: std reads
/// the cgroup's quota from /sys, which a confined backend can no longer open).
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl VhostUserBlk {
    /// `threads` (1..=num_queues) worker threads serve the queues; `uring`: run raw-image I/O
    /// asynchronously with one io_uring per queue.
    pub fn new(
        device: Arc<BlkDevice>,
        config: BlkConfig,
        num_queues: usize,
        threads: usize,
        queue_size: usize,
        uring: bool,
    ) -> io::Result<Self> {
        let async_ok = uring && device.disk.get().identity_file().is_some();
        // Inline submission makes each worker thread do the write's work in the kernel
        // (for O_DIRECT on ext4 most of it); with fewer threads than CPUs and several writes in
        // flight, the kernel's io-wq workers can do it on the idle CPUs instead. Measured on
        // 2 CPUs: 1 queue, 4 KiB QD32 writes +23-38 %; 4 queues -15 % and QD1 writes -15 % (so
        // inline there).
        let threads = threads.clamp(1, num_queues.max(1));
        let async_writes = threads < cpus();
        let queues = (0..num_queues)
            .map(|_| {
                let uring = if async_ok {
                    Some(UringQueue::new(queue_size, async_writes)?)
                } else {
                    None
                };
                Ok(Mutex::new(QueueState {
                    uring,
                    vring: None,
                    tracker: None,
                    generation: 0,
                }))
            })
            .collect::<io::Result<_>>()?;
        Ok(VhostUserBlk {
            device,
            config,
            num_queues,
            threads,
            queue_size,
            event_idx: AtomicBool::new(false),
            mem: GuestMemoryHandle::new(),
            queues,
            inflight: InflightSlot::new(num_queues as u16),
            transfer: Default::default(),
            follow_depth: false,
        })
    }

    /// Under `policy` `auto`, the workers follow the depth of their queues.
    pub fn with_sched(mut self, policy: backends::sched::SchedPolicy) -> Self {
        self.follow_depth = policy == backends::sched::SchedPolicy::Auto;
        self
    }

    /// Where the relay puts the frontend's inflight region for this connection.
    pub fn inflight_slot(&self) -> InflightSlot {
        self.inflight.clone()
    }

    /// The worker thread that serves `queue`.
    pub fn thread_of(&self, queue: usize) -> usize {
        queue % self.threads
    }

    /// The queue behind vring `local` of worker `thread` (a thread's vrings are its queues in
    /// order, as `queues_per_thread` deals them).
    fn queue_of(&self, thread: usize, local: usize) -> usize {
        thread + local * self.threads
    }

    /// The descriptor that polls readable when a queue's io_uring has completions (by queue).
    pub fn completion_fds(&self) -> Vec<Option<RawFd>> {
        self.queues
            .iter()
            .map(|q| {
                q.lock()
                    .ok()
                    .and_then(|q| q.uring.as_ref().map(UringQueue::completion_fd))
            })
            .collect()
    }

    fn queue_state(&self, index: usize) -> io::Result<MutexGuard<'_, QueueState>> {
        self.queues
            .get(index)
            .ok_or_else(|| io::Error::other(format!("no queue {index}")))?
            .lock()
            .map_err(|_| io::Error::other("queue lock poisoned"))
    }

    /// The requests the guest has outstanding on a queue: in flight, and waiting in the avail
    /// ring (the guest writes its index: a bogus one only picks a policy).
    fn depth(&self, qs: &QueueState, vring: &Vring) -> io::Result<usize> {
        let in_flight = qs.uring.as_ref().map_or(0, UringQueue::in_flight);
        let atomic = self.mem.get()?;
        let state = vring.get_ref();
        let queue = state.get_queue();
        let waiting = queue
            .avail_idx(&*atomic.memory(), Ordering::Acquire)
            .map_or(0, |avail| avail.0.wrapping_sub(queue.next_avail()));
        Ok(in_flight + usize::from(waiting))
    }

    /// Serve every available chain of `vring`: synchronously, or submitted to the queue's
    /// io_uring; then notify the guest if it wants to be.
    fn process_queue(&self, qs: &mut QueueState, vring: &Vring) -> io::Result<()> {
        let atomic = self.mem.get()?;
        let mem = atomic.memory();
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let mut used = 0;
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            if let Some(t) = qs.tracker.as_mut() {
                t.popped(head);
            }
            let started = self.device.start(chain, &mem);
            if let Some(len) = self.run(qs, head, started, &atomic) {
                used += give_back(queue, &mem, &[Completed { head, len }], qs.tracker.as_ref());
            }
        }
        if let Some(ring) = qs.uring.as_mut() {
            ring.submit()?;
            // whatever completed meanwhile goes back in this same pass (one interrupt for
            // both), as QEMU does after each submission
            let done = ring.reap(&self.device, false)?;
            self.device
                .io_in_flight
                .fetch_sub(done.len(), Ordering::AcqRel);
            used += give_back(queue, &mem, &done, qs.tracker.as_ref());
        }
        if used > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }

    /// Carry a started request on: its used length if it is done, `None` if it went to the
    /// queue's io_uring.
    fn run(
        &self,
        qs: &mut QueueState,
        head: u16,
        started: Start,
        atomic: &GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> Option<u32> {
        let mem = atomic.memory();
        match started {
            Start::Done(len) => Some(len),
            Start::Io(req) => match (qs.uring.as_mut(), self.device.disk.get().identity_file()) {
                (Some(ring), Some(file)) => match ring.push(file, head, req, atomic.memory()) {
                    Ok(()) => {
                        self.device.io_in_flight.fetch_add(1, Ordering::AcqRel);
                        None
                    }
                    Err(req) => Some(self.device.finish_sync(&mem, &req)),
                },
                _ => Some(self.device.finish_sync(&mem, &req)),
            },
        }
    }

    /// On the queue's first event after the frontend set an inflight region: take over what
    /// a previous backend left in it — resubmit, oldest first, the requests the guest still
    /// waits for, and pop next where that backend would have — then track in it.
    fn take_over_inflight(
        &self,
        index: usize,
        qs: &mut QueueState,
        vring: &Vring,
    ) -> io::Result<()> {
        let Some((generation, region)) = self.inflight.newer_than(qs.generation) else {
            return Ok(());
        };
        qs.generation = generation;
        qs.tracker = region.and_then(|r| r.queue(index)).map(Tracker::new);
        let atomic = self.mem.get()?;
        let mem = atomic.memory();
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let Some(tracker) = qs.tracker.as_mut() else {
            return Ok(());
        };
        let ring_used = queue
            .used_idx(&*mem, std::sync::atomic::Ordering::Acquire)
            .map_err(io::Error::other)?
            .0;
        let recovery = tracker
            .recover(ring_used, queue.size())
            .unwrap_or_else(|e| {
                warn!("queue {index}: {e}: nothing is resubmitted from it");
                tracker.reinitialize(ring_used);
                Recovery {
                    resubmit: Vec::new(),
                    next_avail: ring_used,
                }
            });
        queue.set_next_used(ring_used);
        queue.set_next_avail(recovery.next_avail);
        if recovery.resubmit.is_empty() {
            return Ok(());
        }
        info!(
            "queue {index}: resubmitting {} request(s) the guest still waits for",
            recovery.resubmit.len()
        );
        let mut used = 0;
        for head in recovery.resubmit {
            let chain = SavedChain::new(&mem, GuestAddress(queue.desc_table()), queue.size(), head);
            let started = self.device.start_descriptors(chain, &mem);
            if let Some(len) = self.run(qs, head, started, &atomic) {
                used += give_back(queue, &mem, &[Completed { head, len }], qs.tracker.as_ref());
            }
        }
        if let Some(ring) = qs.uring.as_mut() {
            ring.submit()?;
        }
        if used > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }

    /// Return completed io_uring requests to the guest (`wait`: all of them, for a stop).
    fn complete(&self, qs: &mut QueueState, wait: bool) -> io::Result<()> {
        let (Some(ring), Some(vring)) = (qs.uring.as_mut(), qs.vring.as_ref()) else {
            return Ok(());
        };
        let done = ring.reap(&self.device, wait)?;
        self.device
            .io_in_flight
            .fetch_sub(done.len(), Ordering::AcqRel);
        if done.is_empty() {
            return Ok(());
        }
        let atomic = self.mem.get()?;
        let mem = atomic.memory();
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        give_back(queue, &mem, &done, qs.tracker.as_ref());
        if queue.needs_notification(&*mem).unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBlk {
    pub(crate) fn device(&self) -> &BlkDevice {
        &self.device
    }

    /// Requests handed to io_uring and not completed yet, over every queue.
    pub(crate) fn in_flight(&self) -> usize {
        self.device.io_in_flight.load(Ordering::Acquire)
    }
}

impl VhostUserBackend for VhostUserBlk {
    type Bitmap = backends::guest_memory::BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.queue_size
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_TOPOLOGY
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_MQ
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | VhostUserVirtioFeatures::LOG_ALL.bits();
        if self.device.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::DEVICE_STATE
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    backends::device_state_methods!(transfer);

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = BlkConfig {
            capacity: self.device.disk.get().capacity() >> SECTOR_SHIFT,
            ..self.config.clone()
        };
        backends::config_space::read(&config.to_bytes(), offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem.set(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let mut masks = vec![0u64; self.threads];
        for q in 0..self.num_queues {
            masks[self.thread_of(q)] |= 1 << q;
        }
        masks
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: every accepted request completes before the ring's base is reported
        let mut qs = self.queue_state(queue_index as usize)?;
        self.complete(&mut qs, true)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        backends::worker::exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        backends::worker::recover(thread_id, || {
            if evset != EventSet::IN {
                warn!("worker {thread_id}: unexpected event set {evset:?}");
                return Ok(());
            }
            let event = usize::from(device_event);
            if let Some(queue) = completion_queue(self.num_queues, event) {
                let mut qs = self.queue_state(queue)?;
                return self.complete(&mut qs, false);
            }
            let Some(vring) = vrings.get(event) else {
                warn!("worker {thread_id}: event for unknown source {device_event}");
                return Ok(());
            };
            let queue = self.queue_of(thread_id, event);
            let mut qs = self.queue_state(queue)?;
            if qs.vring.is_none() {
                qs.vring = Some(vring.clone());
            }
            self.take_over_inflight(queue, &mut qs, vring)?;
            // before any work, so that the kernel's io_uring workers this submission may
            // start inherit the policy too
            if self.follow_depth {
                backends::sched::follow_depth(self.depth(&qs, vring)?)?;
            }
            backends::queue::drain(vring, self.event_idx.load(Ordering::Relaxed), || {
                self.process_queue(&mut qs, vring)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{device, TempImage, MIB};

    fn backend(queues: usize, threads: usize) -> VhostUserBlk {
        let img = TempImage::new(&format!("threads-{queues}-{threads}"), &[0u8; MIB as usize]);
        let dev = Arc::new(device(&img, false));
        VhostUserBlk::new(dev, BlkConfig::default(), queues, threads, 16, false).unwrap()
    }

    #[test]
    fn get_config_answers_every_window_of_the_config_space() {
        let vu = backend(1, 1);
        let full = vu.get_config(0, CONFIG_SIZE as u32);
        assert_eq!(full.len(), CONFIG_SIZE);
        // capacity: the 1 MiB image in 512-byte sectors
        assert_eq!(full[..8], (MIB >> 9).to_le_bytes());
        let wrong = backends::config_space::first_wrong_window(&full, |o, s| vu.get_config(o, s));
        assert_eq!(wrong, None);
        // a newer frontend's longer struct: exactly the size asked, zeros past our fields
        let longer = vu.get_config(CONFIG_SIZE as u32 - 4, 36);
        assert_eq!((longer.len(), &longer[4..]), (36, &[0u8; 32][..]));
    }

    #[test]
    fn queues_are_dealt_round_robin_over_the_worker_threads() {
        assert_eq!(backend(4, 2).queues_per_thread(), vec![0b0101, 0b1010]);
        assert_eq!(backend(3, 1).queues_per_thread(), vec![0b111]);
        assert_eq!(backend(2, 2).queues_per_thread(), vec![0b01, 0b10]);
        // more threads than queues would leave threads with nothing to serve
        assert_eq!(backend(2, 8).queues_per_thread(), vec![0b01, 0b10]);
    }

    #[test]
    fn completion_events_lie_above_the_vrings_and_the_exit_event() {
        let vu = backend(4, 2);
        assert_eq!(vu.thread_of(3), 1);
        assert_eq!(completion_event(4, 0), 5);
        assert_eq!(completion_event(4, 3), 8);
        for queue in 0..4 {
            let event = usize::from(completion_event(4, queue));
            assert_eq!(completion_queue(4, event), Some(queue));
            // and back through the thread's vrings: thread_of and queue_of agree
            let thread = vu.thread_of(queue);
            let local = vu.queues_per_thread()[thread].count_ones() as usize
                - (vu.queues_per_thread()[thread] >> queue).count_ones() as usize;
            assert_eq!(vu.queue_of(thread, local), queue);
        }
        // the vrings (0..4) and the exit event (4) are not completions
        assert!((0..=4).all(|e| completion_queue(4, e).is_none()));
    }
}
