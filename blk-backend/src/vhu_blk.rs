//! `impl VhostUserBackend` for the block device: features, config space, and the queue loop.
//! One worker thread per queue (vhost-user-backend runs one epoll loop per thread).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tracing::warn;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::blk::BlkDevice;
use crate::virtio_blk::*;

/// The vhost-user face of one block device, for one frontend connection.
pub struct VhostUserBlk {
    device: Arc<BlkDevice>,
    config: BlkConfig,
    num_queues: usize,
    queue_size: usize,
    event_idx: AtomicBool,
    mem: RwLock<GuestMemoryAtomic<GuestMemoryMmap>>,
}

impl VhostUserBlk {
    pub fn new(
        device: Arc<BlkDevice>,
        config: BlkConfig,
        num_queues: usize,
        queue_size: usize,
    ) -> Self {
        VhostUserBlk {
            device,
            config,
            num_queues,
            queue_size,
            event_idx: AtomicBool::new(false),
            mem: RwLock::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())),
        }
    }

    /// Serve every available chain of `vring`, then notify the guest if it wants to be.
    fn process_queue(&self, vring: &VringRwLock) -> io::Result<()> {
        let atomic = self
            .mem
            .read()
            .map_err(|_| io::Error::other("memory lock poisoned"))?
            .clone();
        let mem = atomic.memory();
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let len = self.device.process(chain, &mem);
            if let Err(e) = queue.add_used(&*mem, head, len) {
                warn!("cannot return descriptor {head} to the guest: {e}");
            }
            used_any = true;
        }
        if used_any && queue.needs_notification(&*mem).unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackend for VhostUserBlk {
    type Bitmap = ();
    type Vring = VringRwLock;

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
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.device.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.read(offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self
            .mem
            .write()
            .map_err(|_| io::Error::other("memory lock poisoned"))? = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            warn!("queue {thread_id}: unexpected event set {evset:?}");
            return Ok(());
        }
        // one queue per thread: the thread's only vring is index 0
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            warn!("queue {thread_id}: event for unknown vring {device_event}");
            return Ok(());
        };
        if !self.event_idx.load(Ordering::Relaxed) {
            return self.process_queue(vring);
        }
        // with EVENT_IDX: drain, re-enable notifications, and drain again if the guest added
        // chains meanwhile
        loop {
            vring.disable_notification().map_err(io::Error::other)?;
            self.process_queue(vring)?;
            if !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }
}
