//! The shared inflight region of the vhost-user spec ("Inflight I/O tracking", split rings),
//! laid out as libvhost-user lays it out, one area per queue:
//!
//! ```text
//! offset  0  u64 features          (0)
//!         8  u16 version           (1; 0 = fresh, never used)
//!        10  u16 desc_num          (the queue size)
//!        12  u16 last_batch_head   (the head being published)
//!        14  u16 used_idx          (the used ring's index after the last publish)
//!        16  DescStateSplit[desc_num], 16 bytes each:
//!              +0 u8 inflight, +1 5 bytes padding, +6 u16 next, +8 u64 counter
//! ```
//!
//! each queue's area rounded up to 64 bytes. Every access is an atomic load or store on the
//! shared mapping (the region outlives the process that wrote it, so the order of the stores
//! is what a successor sees).

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

use super::InflightError;

/// The region format this backend writes.
pub const VERSION: u16 = 1;
const HEADER: usize = 16;
const DESC_STATE: usize = 16;
const ALIGN: usize = 64;
/// The largest virtqueue the spec allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

const OFF_FEATURES: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
const DESC_INFLIGHT: usize = 0;
const DESC_COUNTER: usize = 8;

/// The bytes one queue of `queue_size` descriptors takes.
pub fn queue_area_size(queue_size: u16) -> usize {
    (HEADER + DESC_STATE * usize::from(queue_size)).div_ceil(ALIGN) * ALIGN
}

/// A mapped inflight region: `num_queues` areas of [`queue_area_size`]`(queue_size)` bytes.
pub struct InflightRegion {
    map: MmapRegion<()>,
    num_queues: u16,
    queue_size: u16,
}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightRegion")
            .field("num_queues", &self.num_queues)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

impl InflightRegion {
    /// The size of a region for `num_queues` queues of `queue_size`, if those are allowed
    /// (1 or more queues; a queue size that is a power of two up to 32768).
    pub fn size_for(num_queues: u16, queue_size: u16) -> Result<usize, InflightError> {
        if num_queues == 0 || !queue_size.is_power_of_two() || queue_size > MAX_QUEUE_SIZE {
            return Err(InflightError::Geometry {
                num_queues,
                queue_size,
            });
        }
        Ok(usize::from(num_queues) * queue_area_size(queue_size))
    }

    /// A fresh, zeroed region in a new memfd (GET_INFLIGHT_FD), and the memfd to hand over.
    pub fn create(num_queues: u16, queue_size: u16) -> Result<(Self, File), InflightError> {
        let size = Self::size_for(num_queues, queue_size)?;
        let file = memfd(c"splitvisor-inflight", size as u64).map_err(InflightError::Memfd)?;
        let region = Self::map(&file, 0, size as u64, num_queues, queue_size)?;
        Ok((region, file))
    }

    /// Map a region the frontend handed over (SET_INFLIGHT_FD): `size` bytes of `file` from
    /// `offset`, which must hold `num_queues` queue areas of `queue_size`.
    pub fn map(
        file: &File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        let needed = Self::size_for(num_queues, queue_size)?;
        let file_len = file.metadata().map_err(InflightError::Map)?.len();
        if size < needed as u64 || offset.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(InflightError::TooSmall {
                size,
                offset,
                file_len,
                needed,
            });
        }
        let file = file.try_clone().map_err(InflightError::Map)?;
        let map = MmapRegion::from_file(FileOffset::new(file, offset), needed)
            .map_err(|e| InflightError::Map(std::io::Error::other(e.to_string())))?;
        Ok(InflightRegion {
            map,
            num_queues,
            queue_size,
        })
    }

    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Queue `index`'s area.
    pub fn queue(self: &Arc<Self>, index: usize) -> Option<QueueArea> {
        (index < usize::from(self.num_queues)).then(|| QueueArea {
            region: self.clone(),
            base: index * queue_area_size(self.queue_size),
        })
    }

    fn store<T: vm_memory::AtomicAccess>(&self, at: usize, value: T) {
        // every offset is inside the mapping and naturally aligned (checked by construction:
        // queue areas are 64-byte multiples, fields at fixed offsets), so this cannot fail
        if let Err(e) = self
            .map
            .as_volatile_slice()
            .store(value, at, Ordering::Release)
        {
            tracing::error!("inflight region store at {at}: {e}");
        }
    }

    fn load<T: vm_memory::AtomicAccess + Default>(&self, at: usize) -> T {
        self.map
            .as_volatile_slice()
            .load(at, Ordering::Acquire)
            .unwrap_or_default()
    }
}

/// One queue's area of the region: the header fields and the descriptor states.
pub struct QueueArea {
    region: Arc<InflightRegion>,
    base: usize,
}

impl QueueArea {
    pub fn desc_num_capacity(&self) -> u16 {
        self.region.queue_size
    }
    pub fn version(&self) -> u16 {
        self.region.load(self.base + OFF_VERSION)
    }
    pub fn set_version(&self, v: u16) {
        self.region.store(self.base + OFF_VERSION, v)
    }
    pub fn features(&self) -> u64 {
        self.region.load(self.base + OFF_FEATURES)
    }
    pub fn desc_num(&self) -> u16 {
        self.region.load(self.base + OFF_DESC_NUM)
    }
    pub fn set_desc_num(&self, n: u16) {
        self.region.store(self.base + OFF_DESC_NUM, n)
    }
    pub fn last_batch_head(&self) -> u16 {
        self.region.load(self.base + OFF_LAST_BATCH_HEAD)
    }
    pub fn set_last_batch_head(&self, head: u16) {
        self.region.store(self.base + OFF_LAST_BATCH_HEAD, head)
    }
    pub fn used_idx(&self) -> u16 {
        self.region.load(self.base + OFF_USED_IDX)
    }
    pub fn set_used_idx(&self, idx: u16) {
        self.region.store(self.base + OFF_USED_IDX, idx)
    }

    fn desc(&self, head: u16) -> Option<usize> {
        (head < self.region.queue_size).then(|| self.base + HEADER + DESC_STATE * usize::from(head))
    }
    /// Descriptor `head`'s inflight byte (0 for a head outside the area).
    pub fn inflight(&self, head: u16) -> u8 {
        self.desc(head)
            .map_or(0, |d| self.region.load(d + DESC_INFLIGHT))
    }
    pub fn set_inflight(&self, head: u16, v: u8) {
        if let Some(d) = self.desc(head) {
            self.region.store(d + DESC_INFLIGHT, v)
        }
    }
    pub fn counter(&self, head: u16) -> u64 {
        self.desc(head)
            .map_or(0, |d| self.region.load(d + DESC_COUNTER))
    }
    pub fn set_counter(&self, head: u16, c: u64) {
        if let Some(d) = self.desc(head) {
            self.region.store(d + DESC_COUNTER, c)
        }
    }

    /// Zero the whole area (every descriptor state and the header).
    pub fn clear(&self) {
        for head in 0..self.region.queue_size {
            self.set_counter(head, 0);
            self.set_inflight(head, 0);
        }
        for at in [OFF_DESC_NUM, OFF_LAST_BATCH_HEAD, OFF_USED_IDX, OFF_VERSION] {
            self.region.store(self.base + at, 0u16);
        }
        self.region.store(self.base + OFF_FEATURES, 0u64);
    }
}

/// A memfd of `len` bytes (sparse: zero and free until written).
pub fn memfd(name: &std::ffi::CStr, len: u64) -> std::io::Result<File> {
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new descriptor we own.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(len)?;
    Ok(file)
}
