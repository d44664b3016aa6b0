//! A descriptor chain from the (untrusted) guest as a device sees it: its buffers, split into
//! the device-readable part and the device-writable part, with bounds-checked views of them —
//! the readable bytes copied out (up to a cap), or either part as iovecs for the zero-copy
//! paths (`preadv`/`pwritev`, io_uring, `writev` to a tap).
//!
//! The chain is walked once, from any iterator of its descriptors that walks as virtio-queue's
//! does: its `DescriptorChain`, for a chain popped from the available ring, or
//! [`SavedChain`](crate::saved_chain::SavedChain), for one resubmitted from a saved head index.
//! Either bounds the walk (at most a queue size of descriptors, or an indirect table's, no
//! nested tables, at most 4 GiB in all), ends after a descriptor without NEXT and simply stops
//! where it would not go on. A chain whose last descriptor still names a next one
//! was cut short there — a loop, a next index past the table, lengths that add up past 4 GiB,
//! a bad indirect table after other descriptors — and is refused ([`ChainError::CutShort`]):
//! what is left of it is not the request the driver wrote. (A chain that is nothing but an
//! indirect descriptor with a bad table comes out empty, which every device refuses as too
//! short.)
//!
//! The virtio spec puts every device-readable descriptor before the device-writable ones. What
//! becomes of a device-readable descriptor that comes after a device-writable one is the
//! device's choice, [`OutOfOrder`]: refuse the chain, end the chain before it, or keep it in
//! chain order for a device that checks each descriptor's direction itself.
//!
//! Walking reads only the descriptors. Guest memory is checked when a buffer is used: every
//! view checks every buffer it covers (address and length, overflow-checked) and fails as a
//! whole, so nothing outside guest memory is ever read or written, and buffers a device
//! ignores are never looked at.

use crate::guest_memory::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use crate::guest_iovecs::GuestIovecs;

/// Why a chain, or a view of it, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "the chain does not end where virtio-queue stops following it (a loop, a bad next \
         index or indirect table, or more than 4 GiB in all)"
    )]
    CutShort,
    #[error("a device-readable buffer follows a device-writable one")]
    OutOfOrder,
    #[error("a device-writable buffer in a chain the device only reads")]
    UnexpectedWritable,
    #[error("a device-readable buffer in a chain the device only writes")]
    UnexpectedReadable,
    #[error("a buffer lies outside guest memory ({addr:#x}, {len} bytes)")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("the device-readable part holds {len} bytes, more than the {cap} accepted")]
    TooLarge { len: u64, cap: usize },
}

/// What becomes of a device-readable descriptor that follows a device-writable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfOrder {
    /// The chain is refused with [`ChainError::OutOfOrder`].
    Refuse,
    /// The chain ends just before it: it and every later descriptor are left out, unread
    /// (the net control queue, which stops at its ack byte).
    EndChain,
    /// It and every later descriptor stay in [`ChainBuffers::buffers`] in chain order, outside
    /// both parts, for a device that checks directions itself (blk, whose layout is
    /// positional; the balloon's reporting queue, which counts each wrong buffer).
    Keep,
}

/// One descriptor's buffer, as the driver wrote it (not yet checked against guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainBuffer {
    /// Guest physical address of the first byte.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (the driver set VIRTQ_DESC_F_WRITE); otherwise device-readable.
    pub writable: bool,
}

impl ChainBuffer {
    /// Whether the whole buffer lies in guest memory (possibly across regions). An empty
    /// buffer names no byte and is always inside.
    pub fn check(&self, mem: &GuestMemoryMmap) -> Result<(), ChainError> {
        if !self.wraps() && GuestMemoryBackend::check_range(mem, self.addr, self.len()) {
            Ok(())
        } else {
            Err(self.outside())
        }
    }

    /// The first `at` bytes and the rest, as two buffers of the same direction; `None` if the
    /// buffer is shorter than `at` or the rest's address overflows.
    pub fn split_at(&self, at: u32) -> Option<(ChainBuffer, ChainBuffer)> {
        let rest_len = self.len.checked_sub(at)?;
        let rest_addr = self.addr.checked_add(u64::from(at))?;
        let head = ChainBuffer { len: at, ..*self };
        let rest = ChainBuffer {
            addr: rest_addr,
            len: rest_len,
            ..*self
        };
        Some((head, rest))
    }

    fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the buffer's last byte lies past the end of the address space.
    fn wraps(&self) -> bool {
        self.len > 0 && self.addr.checked_add(u64::from(self.len) - 1).is_none()
    }

    /// Append the buffer's slices of guest memory (one per region it spans) to `out`.
    fn push_slices<'a>(
        &self,
        mem: &'a GuestMemoryMmap,
        out: &mut Vec<crate::guest_iovecs::GuestSlice<'a>>,
    ) -> Result<(), ChainError> {
        if self.wraps() {
            return Err(self.outside());
        }
        for slice in GuestMemoryBackend::get_slices(mem, self.addr, self.len()) {
            out.push(slice.map_err(|_| self.outside())?);
        }
        Ok(())
    }

    fn outside(&self) -> ChainError {
        ChainError::OutsideMemory {
            addr: self.addr.raw_value(),
            len: self.len,
        }
    }
}

/// The buffers of one descriptor chain, in chain order: the device-readable part, then the
/// device-writable part, then (only with [`OutOfOrder::Keep`]) whatever followed a
/// device-readable descriptor that came after a device-writable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBuffers {
    buffers: Vec<ChainBuffer>,
    /// `buffers[..readable_end]` is the readable part.
    readable_end: usize,
    /// `buffers[readable_end..writable_end]` is the writable part.
    writable_end: usize,
}

impl ChainBuffers {
    /// Walk `chain` (a walk that ends after a descriptor without NEXT, as virtio-queue's and
    /// [`SavedChain`](crate::saved_chain::SavedChain)'s do); `out_of_order` says what a
    /// readable descriptor after a writable one does.
    pub fn new(
        chain: impl IntoIterator<Item = Descriptor>,
        out_of_order: OutOfOrder,
    ) -> Result<Self, ChainError> {
        let mut buffers = Vec::new();
        let mut first_writable = None;
        let mut first_out_of_order = None;
        let mut cut_short = false;
        for desc in chain {
            let writable = desc.is_write_only();
            if !writable && first_writable.is_some() && first_out_of_order.is_none() {
                match out_of_order {
                    OutOfOrder::Refuse => return Err(ChainError::OutOfOrder),
                    OutOfOrder::EndChain => {
                        cut_short = false;
                        break;
                    }
                    OutOfOrder::Keep => first_out_of_order = Some(buffers.len()),
                }
            }
            if writable && first_writable.is_none() {
                first_writable = Some(buffers.len());
            }
            // the iterator ends after a descriptor without NEXT, or where it refuses to go on
            cut_short = desc.has_next();
            buffers.push(ChainBuffer {
                addr: desc.addr(),
                len: desc.len(),
                writable,
            });
        }
        if cut_short {
            return Err(ChainError::CutShort);
        }
        let writable_end = first_out_of_order.unwrap_or(buffers.len());
        Ok(ChainBuffers {
            readable_end: first_writable.unwrap_or(writable_end),
            writable_end,
            buffers,
        })
    }

    /// Walk a chain that must hold device-readable buffers only (a packet to send, page
    /// numbers).
    pub fn readable_only(chain: impl IntoIterator<Item = Descriptor>) -> Result<Self, ChainError> {
        Self::one_way(chain, false)
    }

    /// Walk a chain that must hold device-writable buffers only (receive buffers).
    pub fn writable_only(chain: impl IntoIterator<Item = Descriptor>) -> Result<Self, ChainError> {
        Self::one_way(chain, true)
    }

    fn one_way(
        chain: impl IntoIterator<Item = Descriptor>,
        writable: bool,
    ) -> Result<Self, ChainError> {
        let bufs = Self::new(chain, OutOfOrder::Refuse)?;
        if writable && !bufs.readable().is_empty() {
            Err(ChainError::UnexpectedReadable)
        } else if !writable && !bufs.writable().is_empty() {
            Err(ChainError::UnexpectedWritable)
        } else {
            Ok(bufs)
        }
    }

    /// Every buffer of the chain, in chain order.
    pub fn buffers(&self) -> &[ChainBuffer] {
        &self.buffers
    }

    /// The device-readable part: the buffers before the first device-writable one.
    pub fn readable(&self) -> &[ChainBuffer] {
        &self.buffers[..self.readable_end]
    }

    /// The device-writable part: the device-writable buffers that follow the readable part.
    pub fn writable(&self) -> &[ChainBuffer] {
        &self.buffers[self.readable_end..self.writable_end]
    }

    /// How many bytes the readable part holds.
    pub fn readable_len(&self) -> u64 {
        total_len(self.readable())
    }

    /// A copy of the readable part's bytes, if there are no more than `cap` of them.
    pub fn read_readable(&self, mem: &GuestMemoryMmap, cap: usize) -> Result<Vec<u8>, ChainError> {
        let len = self.readable_len();
        if len > cap as u64 {
            return Err(ChainError::TooLarge { len, cap });
        }
        // len <= cap: it fits a usize, and the iovecs fill `out` exactly
        let mut out = vec![0u8; len as usize];
        self.readable_iovecs(mem)?.copy_to(&mut out);
        Ok(out)
    }

    /// The readable part as iovecs into guest memory.
    pub fn readable_iovecs<'a>(
        &self,
        mem: &'a GuestMemoryMmap,
    ) -> Result<GuestIovecs<'a>, ChainError> {
        iovecs(mem, self.readable())
    }

    /// The writable part as iovecs into guest memory.
    pub fn writable_iovecs<'a>(
        &self,
        mem: &'a GuestMemoryMmap,
    ) -> Result<GuestIovecs<'a>, ChainError> {
        iovecs(mem, self.writable())
    }
}

/// `buffers` as iovecs into guest memory, if every one of them lies inside it (a buffer that
/// spans memory regions becomes one iovec per region).
pub fn iovecs<'a>(
    mem: &'a GuestMemoryMmap,
    buffers: &[ChainBuffer],
) -> Result<GuestIovecs<'a>, ChainError> {
    let mut slices = Vec::with_capacity(buffers.len());
    for buf in buffers {
        buf.push_slices(mem, &mut slices)?;
    }
    Ok(GuestIovecs::new(slices))
}

/// The sum of the buffers' lengths (virtio-queue stops a chain at 4 GiB in all, and a u64
/// would hold far more).
fn total_len(buffers: &[ChainBuffer]) -> u64 {
    buffers.iter().map(|b| u64::from(b.len)).sum()
}

#[cfg(test)]
#[path = "descriptor_chain_tests.rs"]
mod tests;
