//! Guest buffers as iovecs, so that a backend moves data between guest memory and a file or
//! a tap with one vectored system call and no copy through its own memory.

use vm_memory::bitmap::Bitmap;
use vm_memory::VolatileSlice;

use crate::guest_memory::BitmapMmapRegion;

/// A slice of guest memory with its region's dirty-page log.
pub type GuestSlice<'a> = VolatileSlice<'a, BitmapMmapRegion>;

/// At most this many iovecs per system call (Linux's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// Guest buffers for one request, as iovecs for the kernel. Holds the slices, so the memory
/// they point into stays mapped while the iovecs are in use.
pub struct GuestIovecs<'a> {
    slices: Vec<GuestSlice<'a>>,
}

impl<'a> GuestIovecs<'a> {
    /// A plain host buffer seen as guest buffers (for metadata and copy-on-write data).
    pub fn from_buf(buf: &'a mut [u8]) -> GuestIovecs<'a> {
        // SAFETY: `buf` is valid for reads and writes of its length for 'a, and nothing else
        // reaches it while the slice borrows it; its log is empty (not guest memory).
        let slice = unsafe {
            VolatileSlice::with_bitmap(
                buf.as_mut_ptr(),
                buf.len(),
                BitmapMmapRegion::default(),
                None,
            )
        };
        GuestIovecs {
            slices: vec![slice],
        }
    }

    /// Guest buffers already checked and sliced (see `descriptor_chain`, which makes them).
    pub fn new(slices: Vec<GuestSlice<'a>>) -> Self {
        GuestIovecs { slices }
    }

    /// How many bytes the buffers hold.
    pub fn len(&self) -> usize {
        self.slices.iter().map(|s| s.len()).sum()
    }

    /// Whether the buffers hold no byte at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffers, one slice per guest buffer and memory region it spans.
    pub fn slices(&self) -> &[GuestSlice<'a>] {
        &self.slices
    }

    /// The bytes `offset .. offset + len` of these buffers.
    pub fn sub(&self, mut offset: usize, mut len: usize) -> GuestIovecs<'a> {
        let mut out = Vec::new();
        for s in &self.slices {
            if len == 0 {
                break;
            }
            if offset >= s.len() {
                offset -= s.len();
                continue;
            }
            let n = (s.len() - offset).min(len);
            if let Ok(part) = s.subslice(offset, n) {
                out.push(part);
            }
            len -= n;
            offset = 0;
        }
        GuestIovecs { slices: out }
    }

    /// The kernel wrote the first `len` bytes (a read into these buffers by io_uring,
    /// `preadv` or a tap's `readv`, which vm-memory does not see): set their pages in the
    /// frontend's dirty-page log, if it keeps one (a live migration). Call it after the write
    /// is done, never before: a page logged early may be sent before the data lands.
    pub fn mark_written(&self, mut len: usize) {
        for s in &self.slices {
            if len == 0 {
                break;
            }
            let n = s.len().min(len);
            s.bitmap().mark_dirty(0, n);
            len -= n;
        }
    }

    /// Fill the buffers with zeroes.
    pub fn fill_zero(&self) {
        const ZEROES: [u8; 4096] = [0; 4096];
        for s in &self.slices {
            let mut at = 0;
            while at < s.len() {
                let n = (s.len() - at).min(ZEROES.len());
                if let Ok(part) = s.subslice(at, n) {
                    part.copy_from(&ZEROES[..n]);
                }
                at += n;
            }
        }
    }

    /// Copy `data` into the buffers (as much as fits).
    pub fn copy_from(&self, mut data: &[u8]) {
        for s in &self.slices {
            let n = s.len().min(data.len());
            s.copy_from(&data[..n]);
            data = &data[n..];
        }
    }

    /// Copy the buffers' bytes into `out` (as much as fits).
    pub fn copy_to(&self, mut out: &mut [u8]) {
        for s in &self.slices {
            let n = s.len().min(out.len());
            let (head, rest) = out.split_at_mut(n);
            s.copy_to(head);
            out = rest;
        }
    }

    /// The iovecs covering the buffers from byte `skip` on.
    pub fn iovecs_from(&self, mut skip: usize) -> Vec<libc::iovec> {
        let mut out = Vec::with_capacity(self.slices.len());
        for s in &self.slices {
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            out.push(libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().wrapping_add(skip).cast(),
                iov_len: s.len() - skip,
            });
            skip = 0;
        }
        out
    }
}
