//! Turning a descriptor chain from the (untrusted) guest into a validated block request.
//!
//! Layout accepted (what Linux, Windows and firmware drivers send): a device-readable 16-byte
//! header descriptor, zero or more data descriptors, and a device-writable status descriptor
//! last (the status is its last byte). Every descriptor's range must lie in guest memory, data
//! must go the right direction, and reads/writes must be whole sectors inside the disk.
//! `backends::descriptor_chain` walks the chain (bounded by virtio-queue; a chain cut short is
//! refused) and keeps it in chain order: the layout is positional, and a readable descriptor
//! after a writable one is judged here like any data buffer in the wrong direction (a flush
//! takes data in either).

use std::ops::Deref;

use backends::descriptor_chain::{ChainBuffer, ChainBuffers, ChainError, OutOfOrder};
use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, Le32, Le64};

use crate::virtio_blk::*;

/// What the guest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    /// A type we do not implement: answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
}

/// A validated request: every buffer is inside guest memory, and for reads and writes the byte
/// range `offset .. offset + data_len` is inside the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    /// The data buffers, checked to lie in guest memory.
    pub data: Vec<ChainBuffer>,
    pub data_len: u64,
    pub status: GuestAddress,
}

impl Request {
    /// Byte offset of the first sector.
    pub fn offset(&self) -> u64 {
        self.sector << SECTOR_SHIFT
    }
}

/// A discard or write-zeroes range, as the guest sent it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Segment {
    pub sector: Le64,
    pub num_sectors: Le32,
    pub flags: Le32,
}

// SAFETY: plain old data with no padding (8 + 4 + 4 bytes); every bit pattern is valid.
unsafe impl ByteValued for Segment {}

/// `struct virtio_blk_outhdr`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Header {
    pub kind: Le32,
    pub ioprio: Le32,
    pub sector: Le64,
}

// SAFETY: plain old data with no padding (4 + 4 + 8 bytes); every bit pattern is valid.
unsafe impl ByteValued for Header {}

/// Why a chain is not a valid request. `status` is where the answer can still be written, if
/// the chain had a usable status descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BadRequest {
    pub status: Option<GuestAddress>,
    pub reason: BadReason,
}

/// What was wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReason {
    #[error("the chain has no device-writable status descriptor at its end")]
    NoStatus,
    #[error("the header descriptor is missing, device-writable or not 16 bytes")]
    BadHeader,
    #[error("a descriptor points outside guest memory ({addr:#x}, {len} bytes)")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("a data buffer goes the wrong direction for request type {0}")]
    WrongDirection(u32),
    #[error("the data length {0} is not a whole number of sectors")]
    NotSectorMultiple(u64),
    #[error("sectors {sector}+{bytes} bytes lie beyond the disk's end")]
    BeyondEnd { sector: u64, bytes: u64 },
    #[error("the request carries {0} bytes, more than the {1} we accept")]
    TooLarge(u64, u64),
    #[error(transparent)]
    Chain(ChainError),
}

impl From<ChainError> for BadReason {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::OutsideMemory { addr, len } => BadReason::OutsideMemory { addr, len },
            other => BadReason::Chain(other),
        }
    }
}

/// Limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Disk size in bytes (a multiple of 512).
    pub capacity_bytes: u64,
    /// Largest data length of one request.
    pub max_request_bytes: u64,
}

/// Parse and validate the chain.
pub fn parse<M>(chain: DescriptorChain<M>, limits: &Limits) -> Result<Request, BadRequest>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    parse_descriptors(chain.clone(), chain.memory(), limits)
}

/// Parse and validate a chain given as its descriptors (a popped chain, or one walked again
/// from its saved head by `backends::saved_chain` when an inflight request is resubmitted).
pub fn parse_descriptors(
    chain: impl IntoIterator<Item = Descriptor>,
    mem: &GuestMemoryMmap,
    limits: &Limits,
) -> Result<Request, BadRequest> {
    let bad = |status, reason| BadRequest { status, reason };
    let bufs = ChainBuffers::new(chain, OutOfOrder::Keep).map_err(|e| bad(None, e.into()))?;
    let descs = bufs.buffers();

    // the status descriptor first, so that every later failure can still be reported
    let last = descs
        .last()
        .filter(|d| d.writable && d.len >= 1 && descs.len() >= 2)
        .ok_or(bad(None, BadReason::NoStatus))?;
    let (data_in, status_byte) = last
        .split_at(last.len - 1)
        .filter(|(_, status)| status.check(mem).is_ok())
        .ok_or(bad(None, outside(last)))?;
    let status = Some(status_byte.addr);

    let head = &descs[0];
    if head.writable || head.len != HEADER_SIZE {
        return Err(bad(status, BadReason::BadHeader));
    }
    let header: Header = mem
        .read_obj(head.addr)
        .map_err(|_| bad(status, outside(head)))?;
    let kind = match header.kind.to_native() {
        VIRTIO_BLK_T_IN => RequestKind::In,
        VIRTIO_BLK_T_OUT => RequestKind::Out,
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
        VIRTIO_BLK_T_DISCARD => RequestKind::Discard,
        VIRTIO_BLK_T_WRITE_ZEROES => RequestKind::WriteZeroes,
        other => RequestKind::Unsupported(other),
    };
    let device_writes = matches!(kind, RequestKind::In | RequestKind::GetId);

    let mut data = Vec::with_capacity(descs.len() - 2);
    let mut data_len = 0u64;
    for d in &descs[1..descs.len() - 1] {
        d.check(mem).map_err(|e| bad(status, e.into()))?;
        if d.writable != device_writes && !matches!(kind, RequestKind::Flush) {
            return Err(bad(
                status,
                BadReason::WrongDirection(header.kind.to_native()),
            ));
        }
        data.push(*d);
        data_len += u64::from(d.len);
    }
    // the status descriptor may carry data-in bytes before the status byte (other requests
    // have nothing to put there: those bytes are left alone)
    if data_in.len > 0 && device_writes {
        data_in.check(mem).map_err(|e| bad(status, e.into()))?;
        data.push(data_in);
        data_len += u64::from(data_in.len);
    }

    let sector = header.sector.to_native();
    if matches!(kind, RequestKind::In | RequestKind::Out) {
        if !data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(bad(status, BadReason::NotSectorMultiple(data_len)));
        }
        if data_len > limits.max_request_bytes {
            return Err(bad(
                status,
                BadReason::TooLarge(data_len, limits.max_request_bytes),
            ));
        }
        check_range(sector, data_len, limits).map_err(|r| bad(status, r))?;
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status: status_byte.addr,
    })
}

/// Check that `bytes` from `sector` lie inside the disk.
pub fn check_range(sector: u64, bytes: u64, limits: &Limits) -> Result<(), BadReason> {
    let end = sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|start| start.checked_add(bytes));
    match end {
        Some(end) if end <= limits.capacity_bytes => Ok(()),
        _ => Err(BadReason::BeyondEnd { sector, bytes }),
    }
}

fn outside(buf: &ChainBuffer) -> BadReason {
    BadReason::OutsideMemory {
        addr: buf.addr.0,
        len: buf.len,
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
