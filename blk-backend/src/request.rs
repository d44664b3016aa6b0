//! Turning a descriptor chain from the (untrusted) guest into a validated block request.
//!
//! Layout accepted (what Linux, Windows and firmware drivers send): a device-readable 16-byte
//! header descriptor, zero or more data descriptors, and a device-writable status descriptor
//! last (the status is its last byte). Every descriptor's range must lie in guest memory, data
//! must go the right direction, and reads/writes must be whole sectors inside the disk.
//! virtio-queue bounds the chain itself (length ≤ queue size, no loops, indirect tables).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemory, Le32, Le64, Permissions};

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

/// One guest buffer of a request's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated request: every buffer is inside guest memory, and for reads and writes the byte
/// range `offset .. offset + data_len` is inside the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    pub data: Vec<DataBuf>,
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
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mem = chain.memory();
    let descs: Vec<_> = chain.clone().collect();
    let bad = |status, reason| BadRequest { status, reason };

    // the status descriptor first, so that every later failure can still be reported
    let last = descs
        .last()
        .filter(|d| d.is_write_only() && d.len() >= 1 && descs.len() >= 2)
        .ok_or(bad(None, BadReason::NoStatus))?;
    let status_addr = last
        .addr()
        .checked_add(u64::from(last.len()) - 1)
        .filter(|a| mem.check_range(*a, 1, Permissions::Write))
        .ok_or(bad(
            None,
            BadReason::OutsideMemory {
                addr: last.addr().raw_value(),
                len: last.len(),
            },
        ))?;
    let status = Some(status_addr);

    let head = &descs[0];
    if head.is_write_only() || head.len() != HEADER_SIZE {
        return Err(bad(status, BadReason::BadHeader));
    }
    let header: Header = mem
        .read_obj(head.addr())
        .map_err(|_| bad(status, outside(head.addr(), head.len())))?;
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
        let access = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(d.addr(), d.len() as usize, access) {
            return Err(bad(status, outside(d.addr(), d.len())));
        }
        if d.is_write_only() != device_writes && !matches!(kind, RequestKind::Flush) {
            return Err(bad(
                status,
                BadReason::WrongDirection(header.kind.to_native()),
            ));
        }
        data.push(DataBuf {
            addr: d.addr(),
            len: d.len(),
        });
        data_len += u64::from(d.len());
    }
    // the status descriptor may carry data-in bytes before the status byte (other requests
    // have nothing to put there: those bytes are left alone)
    if last.len() > 1 && device_writes {
        data.push(DataBuf {
            addr: last.addr(),
            len: last.len() - 1,
        });
        data_len += u64::from(last.len() - 1);
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
        status: status_addr,
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

fn outside(addr: GuestAddress, len: u32) -> BadReason {
    BadReason::OutsideMemory {
        addr: addr.raw_value(),
        len,
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
