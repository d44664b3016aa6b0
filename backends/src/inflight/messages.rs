//! GET_INFLIGHT_FD and SET_INFLIGHT_FD, answered in the relay for a device that tracks
//! inflight requests. The payload is QEMU's and the vhost crate's `VhostUserInflight`:
//! `mmap_size: u64, mmap_offset: u64, num_queues: u16, queue_size: u16` (24 bytes with the
//! C struct's padding; 20 are read).

use std::fs::File;

use super::{InflightError, InflightRegion, InflightSlot};

pub const REQ_GET_INFLIGHT_FD: u32 = 31;
pub const REQ_SET_INFLIGHT_FD: u32 = 32;
/// The payload as the C struct lays it out.
pub const BODY_LEN: usize = 24;
const READ_LEN: usize = 20;

/// The payload of both messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InflightInfo {
    pub mmap_size: u64,
    pub mmap_offset: u64,
    pub num_queues: u16,
    pub queue_size: u16,
}

impl InflightInfo {
    pub fn parse(body: &[u8]) -> Option<InflightInfo> {
        let b = body.get(..READ_LEN)?;
        let u64_at = |at: usize| b[at..at + 8].try_into().ok().map(u64::from_le_bytes);
        let u16_at = |at: usize| b[at..at + 2].try_into().ok().map(u16::from_le_bytes);
        Some(InflightInfo {
            mmap_size: u64_at(0)?,
            mmap_offset: u64_at(8)?,
            num_queues: u16_at(16)?,
            queue_size: u16_at(18)?,
        })
    }

    pub fn to_bytes(self) -> [u8; BODY_LEN] {
        let mut b = [0u8; BODY_LEN];
        b[0..8].copy_from_slice(&self.mmap_size.to_le_bytes());
        b[8..16].copy_from_slice(&self.mmap_offset.to_le_bytes());
        b[16..18].copy_from_slice(&self.num_queues.to_le_bytes());
        b[18..20].copy_from_slice(&self.queue_size.to_le_bytes());
        b
    }
}

/// What the relay sends back for one of the two messages.
pub struct Reply {
    pub body: Vec<u8>,
    pub file: Option<File>,
}

/// Why a GET_INFLIGHT_FD or SET_INFLIGHT_FD was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the message body is {0} bytes, too short for an inflight description")]
    Body(usize),
    #[error("the frontend asks for {asked} queues; the device has {max}")]
    Queues { asked: u16, max: u16 },
    #[error("SET_INFLIGHT_FD came without a descriptor")]
    NoFile,
    #[error(transparent)]
    Region(#[from] InflightError),
}

/// GET_INFLIGHT_FD: a fresh region for the queues the frontend names, in a new memfd. A
/// refusal is answered with an empty description and no descriptor (the frontend fails its
/// request, naming it).
pub fn get_inflight_fd(slot: &InflightSlot, body: &[u8]) -> Reply {
    match make_region(slot, body) {
        Ok((info, file)) => Reply {
            body: info.to_bytes().to_vec(),
            file: Some(file),
        },
        Err(e) => {
            tracing::warn!("GET_INFLIGHT_FD refused: {e}");
            Reply {
                body: InflightInfo::default().to_bytes().to_vec(),
                file: None,
            }
        }
    }
}

fn make_region(slot: &InflightSlot, body: &[u8]) -> Result<(InflightInfo, File), RequestError> {
    let asked = InflightInfo::parse(body).ok_or(RequestError::Body(body.len()))?;
    if asked.num_queues > slot.max_queues() {
        return Err(RequestError::Queues {
            asked: asked.num_queues,
            max: slot.max_queues(),
        });
    }
    let (_region, file) = InflightRegion::create(asked.num_queues, asked.queue_size)?;
    let size = InflightRegion::size_for(asked.num_queues, asked.queue_size)?;
    tracing::debug!(
        queues = asked.num_queues,
        queue_size = asked.queue_size,
        size,
        "inflight region created"
    );
    Ok((
        InflightInfo {
            mmap_size: size as u64,
            mmap_offset: 0,
            ..asked
        },
        file,
    ))
}

/// SET_INFLIGHT_FD: map the region the frontend keeps and hand it to the device.
pub fn set_inflight_fd(
    slot: &InflightSlot,
    body: &[u8],
    files: &[File],
) -> Result<(), RequestError> {
    let info = InflightInfo::parse(body).ok_or(RequestError::Body(body.len()))?;
    if info.num_queues > slot.max_queues() {
        return Err(RequestError::Queues {
            asked: info.num_queues,
            max: slot.max_queues(),
        });
    }
    let file = files.first().ok_or(RequestError::NoFile)?;
    let region = InflightRegion::map(
        file,
        info.mmap_offset,
        info.mmap_size,
        info.num_queues,
        info.queue_size,
    )?;
    tracing::debug!(
        queues = info.num_queues,
        queue_size = info.queue_size,
        "inflight region set"
    );
    slot.set(region);
    Ok(())
}
