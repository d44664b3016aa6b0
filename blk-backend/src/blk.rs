//! The block device's behaviour: execute one request against the disk and answer the guest.

use std::ops::Deref;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

use backends::descriptor_chain::{self, ChainBuffer};
use backends::guest_memory::GuestMemoryMmap;
use tracing::{debug, warn};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use crate::disk::{Disk, GuestIovecs};
use crate::request::{self, BadReason, Limits, Request, RequestKind, Segment};
use crate::stats::Stats;
use crate::virtio_blk::*;

/// Most discard / write-zeroes segments accepted in one request.
pub const MAX_SEGMENTS: u32 = 32;

/// The disk a device serves, switchable while it runs (`reopen`: the overlay of an external
/// snapshot). Each request takes the disk of the moment; a switch waits for none in flight.
pub struct DiskSlot(RwLock<Arc<dyn Disk>>);

impl DiskSlot {
    pub fn new(disk: Box<dyn Disk>) -> DiskSlot {
        DiskSlot(RwLock::new(Arc::from(disk)))
    }

    /// The disk served now.
    pub fn get(&self) -> Arc<dyn Disk> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serve `disk` from now on; the disk served until now.
    pub fn replace(&self, disk: Box<dyn Disk>) -> Arc<dyn Disk> {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *slot, Arc::from(disk))
    }
}

/// The device state shared by all queues.
pub struct BlkDevice {
    pub disk: DiskSlot,
    /// Requests handed to io_uring and not completed yet (a `reopen` waits for none).
    pub io_in_flight: AtomicUsize,
    pub readonly: bool,
    pub serial: Vec<u8>,
    /// Largest data length of one request.
    pub max_request_bytes: u64,
    pub stats: Arc<Stats>,
}

/// How [`BlkDevice::start`] left a request.
pub enum Start {
    /// Answered; the used length.
    Done(u32),
    /// For the caller to run on the image file, then [`BlkDevice::finish`].
    Io(Request),
}

/// How a request ended: the status byte and how many bytes went to the guest besides it.
struct Outcome {
    status: u8,
    written: u32,
}

impl Outcome {
    fn ok(written: u32) -> Self {
        Outcome {
            status: VIRTIO_BLK_S_OK as u8,
            written,
        }
    }
    fn status(status: u32) -> Self {
        Outcome {
            status: status as u8,
            written: 0,
        }
    }
}

impl BlkDevice {
    /// What requests are checked against now (the capacity can change: online resize).
    pub fn limits(&self) -> Limits {
        Limits {
            capacity_bytes: self.disk.get().capacity(),
            max_request_bytes: self.max_request_bytes,
        }
    }

    /// Take the image's current size as the disk's; returns `(old, new)` when it changed.
    pub fn resize(&self) -> std::io::Result<Option<(u64, u64)>> {
        let old = self.disk.get().capacity();
        let new = self.disk.get().refresh_capacity()?;
        Ok((old != new).then_some((old, new)))
    }

    /// Handle one chain synchronously; returns the used length to put in the used ring.
    pub fn process<M>(&self, chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> u32
    where
        M: Deref<Target = GuestMemoryMmap> + Clone,
    {
        match self.start(chain, mem) {
            Start::Done(len) => len,
            Start::Io(req) => self.finish_sync(mem, &req),
        }
    }

    /// Begin a request. Reads, writes and flushes that go to the image file come back as
    /// [`Start::Io`]: the caller runs them (on io_uring, or with [`BlkDevice::finish_sync`])
    /// and completes them with [`BlkDevice::finish`]. Everything else is answered here.
    pub fn start<M>(&self, chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Start
    where
        M: Deref<Target = GuestMemoryMmap> + Clone,
    {
        self.start_descriptors(chain, mem)
    }

    /// [`BlkDevice::start`] for a chain given as its descriptors (a resubmitted inflight
    /// request, walked again from its saved head).
    pub fn start_descriptors(
        &self,
        chain: impl IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
        mem: &GuestMemoryMmap,
    ) -> Start {
        match request::parse_descriptors(chain, mem, &self.limits()) {
            Ok(req) if self.is_file_io(&req) => {
                self.count(&req);
                Stats::add(&self.stats.in_flight, 1);
                Start::Io(req)
            }
            Ok(req) => {
                let out = self.execute(&req, mem);
                Start::Done(self.answer(mem, req.status, out))
            }
            Err(bad) => {
                Stats::add(&self.stats.bad_requests, 1);
                warn!("bad request from the guest: {}", bad.reason);
                Start::Done(match bad.status {
                    Some(status) => self.answer(mem, status, Outcome::status(VIRTIO_BLK_S_IOERR)),
                    None => 0,
                })
            }
        }
    }

    /// Reads always, writes and flushes unless the disk is read-only (then `execute` refuses
    /// writes and acknowledges flushes without touching the image); writes the disk checks
    /// itself (`Disk::checks_writes_at`) are executed here, through the disk.
    fn is_file_io(&self, req: &Request) -> bool {
        match req.kind {
            RequestKind::In => true,
            RequestKind::Out => !self.readonly && !self.disk.get().checks_writes_at(req.offset()),
            RequestKind::Flush => !self.readonly,
            _ => false,
        }
    }

    /// Count a request by type.
    fn count(&self, req: &Request) {
        let s = &self.stats;
        let counter = match req.kind {
            RequestKind::In => &s.reads,
            RequestKind::Out => &s.writes,
            RequestKind::Flush => &s.flushes,
            RequestKind::GetId => &s.get_ids,
            RequestKind::Discard => &s.discards,
            RequestKind::WriteZeroes => &s.write_zeroes,
            RequestKind::Unsupported(_) => &s.unsupported,
        };
        Stats::add(counter, 1);
    }

    /// Complete a request started with [`Start::Io`]; returns the used length.
    pub fn finish(&self, mem: &GuestMemoryMmap, req: &Request, result: std::io::Result<()>) -> u32 {
        self.stats
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if req.kind == RequestKind::In {
            // the kernel filled the buffers (io_uring, preadv), a failed read perhaps some of
            // them: vm-memory did not see it
            if let Ok(bufs) = guest_iovecs(mem, &req.data) {
                bufs.mark_written(bufs.len());
            }
        }
        let out = self.io_outcome(req, result);
        self.answer(mem, req.status, out)
    }

    /// Run a [`Start::Io`] request here and now, and complete it.
    pub fn finish_sync(&self, mem: &GuestMemoryMmap, req: &Request) -> u32 {
        let result = self.run_io(mem, req);
        self.finish(mem, req, result)
    }

    /// The file I/O of a read, write or flush, done synchronously (also used to redo an
    /// asynchronous request after a short transfer).
    pub fn run_io(&self, mem: &GuestMemoryMmap, req: &Request) -> std::io::Result<()> {
        match req.kind {
            RequestKind::In => {
                guest_iovecs(mem, &req.data).and_then(|b| self.disk.get().read_at(&b, req.offset()))
            }
            RequestKind::Out => guest_iovecs(mem, &req.data)
                .and_then(|b| self.disk.get().write_at(&b, req.offset())),
            _ => self.disk.get().flush(),
        }
    }

    /// The outcome of a read, write or flush, with its bytes counted.
    fn io_outcome(&self, req: &Request, result: std::io::Result<()>) -> Outcome {
        let s = &self.stats;
        self.io_result(result, req, || match req.kind {
            RequestKind::In => {
                Stats::add(&s.bytes_read, req.data_len);
                req.data_len as u32
            }
            RequestKind::Out => {
                Stats::add(&s.bytes_written, req.data_len);
                0
            }
            _ => 0,
        })
    }

    fn answer(&self, mem: &GuestMemoryMmap, status: GuestAddress, out: Outcome) -> u32 {
        // parse() checked the status byte lies in guest memory
        if mem.write_obj(out.status, status).is_err() {
            return 0;
        }
        out.written + 1
    }

    /// Everything that is not file I/O (see [`BlkDevice::is_file_io`]).
    fn execute(&self, req: &Request, mem: &GuestMemoryMmap) -> Outcome {
        self.count(req);
        match req.kind {
            // only here on a read-only disk (reads are always file I/O)
            RequestKind::Out | RequestKind::Discard | RequestKind::WriteZeroes if self.readonly => {
                Stats::add(&self.stats.readonly_refused, 1);
                Outcome::status(VIRTIO_BLK_S_IOERR)
            }
            RequestKind::Flush => Outcome::ok(0),
            RequestKind::GetId => {
                let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
                let n = self.serial.len().min(id.len());
                id[..n].copy_from_slice(&self.serial[..n]);
                Outcome::ok(write_to_bufs(mem, &req.data, &id))
            }
            RequestKind::Discard | RequestKind::WriteZeroes => self.ranges(req, mem),
            RequestKind::Unsupported(kind) => {
                debug!("unsupported request type {kind}");
                Outcome::status(VIRTIO_BLK_S_UNSUPP)
            }
            RequestKind::In | RequestKind::Out => {
                let result = self.run_io(mem, req);
                self.io_outcome(req, result)
            }
        }
    }

    fn io_result(
        &self,
        result: std::io::Result<()>,
        req: &Request,
        on_ok: impl FnOnce() -> u32,
    ) -> Outcome {
        match result {
            Ok(()) => Outcome::ok(on_ok()),
            Err(e) => {
                Stats::add(&self.stats.io_errors, 1);
                warn!(
                    "{:?} at sector {} ({} bytes) failed: {e}",
                    req.kind, req.sector, req.data_len
                );
                Outcome::status(VIRTIO_BLK_S_IOERR)
            }
        }
    }

    /// Discard and write-zeroes: validate every segment, then apply them.
    fn ranges(&self, req: &Request, mem: &GuestMemoryMmap) -> Outcome {
        let bad = |reason: BadReason| {
            Stats::add(&self.stats.bad_requests, 1);
            warn!("bad {:?} request from the guest: {reason}", req.kind);
            Outcome::status(VIRTIO_BLK_S_IOERR)
        };
        let segments = match read_segments(mem, &req.data, req.data_len) {
            Some(s) => s,
            None => return bad(BadReason::NotSectorMultiple(req.data_len)),
        };
        let discard = req.kind == RequestKind::Discard;
        let allowed_flags = if discard { 0 } else { WRITE_ZEROES_FLAG_UNMAP };
        for seg in &segments {
            if seg.flags.to_native() & !allowed_flags != 0 {
                Stats::add(&self.stats.unsupported, 1);
                return Outcome::status(VIRTIO_BLK_S_UNSUPP);
            }
            let bytes = u64::from(seg.num_sectors.to_native()) << SECTOR_SHIFT;
            if let Err(r) = request::check_range(seg.sector.to_native(), bytes, &self.limits()) {
                return bad(r);
            }
        }
        for seg in &segments {
            let offset = seg.sector.to_native() << SECTOR_SHIFT;
            let len = u64::from(seg.num_sectors.to_native()) << SECTOR_SHIFT;
            let unmap = seg.flags.to_native() & WRITE_ZEROES_FLAG_UNMAP != 0;
            let result = if discard {
                self.disk.get().discard(offset, len)
            } else {
                self.disk.get().write_zeroes(offset, len, unmap)
            };
            if let Err(e) = result {
                Stats::add(&self.stats.io_errors, 1);
                warn!("{:?} of {len} bytes at {offset} failed: {e}", req.kind);
                return Outcome::status(VIRTIO_BLK_S_IOERR);
            }
        }
        Outcome::ok(0)
    }
}

/// The data buffers as iovecs (parse() checked that they lie in guest memory).
fn guest_iovecs<'a>(
    mem: &'a GuestMemoryMmap,
    data: &[ChainBuffer],
) -> std::io::Result<GuestIovecs<'a>> {
    descriptor_chain::iovecs(mem, data)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// Copy `bytes` into the guest buffers in order; returns how many fit.
fn write_to_bufs(mem: &GuestMemoryMmap, data: &[ChainBuffer], bytes: &[u8]) -> u32 {
    let Ok(bufs) = descriptor_chain::iovecs(mem, data) else {
        return 0;
    };
    bufs.copy_from(bytes);
    // at most the 20 bytes of an id
    bufs.len().min(bytes.len()) as u32
}

/// The segments of a discard / write-zeroes request; `None` when the data is not a whole
/// number of segments or carries too many.
fn read_segments(mem: &GuestMemoryMmap, data: &[ChainBuffer], len: u64) -> Option<Vec<Segment>> {
    let size = u64::from(SEGMENT_SIZE);
    if len == 0 || !len.is_multiple_of(size) || len / size > u64::from(MAX_SEGMENTS) {
        return None;
    }
    let mut raw = vec![0u8; len as usize];
    descriptor_chain::iovecs(mem, data).ok()?.copy_to(&mut raw);
    Some(
        raw.chunks_exact(SEGMENT_SIZE as usize)
            .map(|c| {
                let mut seg = Segment::default();
                vm_memory::ByteValued::as_mut_slice(&mut seg).copy_from_slice(c);
                seg
            })
            .collect(),
    )
}

#[cfg(test)]
#[path = "blk_tests.rs"]
mod tests;
