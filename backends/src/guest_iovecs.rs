//! Guest buffers as iovecs, so that a backend moves data between guest memory and a file or
//! a tap with one vectored system call and no copy through its own memory.

use vm_memory::VolatileSlice;

/// At most this many iovecs per system call (Linux's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// Guest buffers for one request, as iovecs for the kernel. Holds the slices, so the memory
/// they point into stays mapped while the iovecs are in use.
pub struct GuestIovecs<'a> {
    slices: Vec<VolatileSlice<'a>>,
}

impl<'a> GuestIovecs<'a> {
    /// A plain host buffer seen as guest buffers (for metadata and copy-on-write data).
    pub fn from_buf(buf: &'a mut [u8]) -> GuestIovecs<'a> {
        GuestIovecs {
            slices: vec![VolatileSlice::from(buf)],
        }
    }

    /// Guest buffers already checked and sliced (see `descriptor_chain`, which makes them).
    pub fn new(slices: Vec<VolatileSlice<'a>>) -> Self {
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
    pub fn slices(&self) -> &[VolatileSlice<'a>] {
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
