//! The frontend's side of VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (the vhost-user spec's
//! "Inflight I/O tracking"): the backend keeps a record of the requests it took from the rings
//! and has not completed, in a shared region it hands to the frontend; a restarted backend is
//! given the same region and resubmits what the guest still waits for.
//!
//! ```text
//!   no region ──(activation or replay, INFLIGHT_SHMFD negotiated)──► GET_INFLIGHT_FD
//!        ──(reply checked: size, shape)──► region held ──► SET_INFLIGHT_FD (same memfd)
//!   region held ──(backend restarted: replay)──► SET_INFLIGHT_FD with the same memfd, no GET
//!   region held ──(driver reset)──► no region (the next activation gets a fresh one)
//! ```
//!
//! As in QEMU's vhost-user-blk (`vhost_dev_get_inflight` / `vhost_dev_set_inflight`), the
//! frontend only keeps the memfd and the reply: it never maps the region, whose layout is the
//! backend's.

use std::fs::File;
use std::os::fd::AsRawFd;

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};

use super::{protocol_err, FrontendError, VhostUserDevice};

/// The largest region a backend may ask the vmm to hold and pass on (a split ring's record is
/// 16 bytes per descriptor plus a small header: 1 GiB is far beyond any real device).
pub const MAX_REGION_SIZE: u64 = 1 << 30;

/// What is wrong with a backend's GET_INFLIGHT_FD reply.
#[derive(Debug, thiserror::Error)]
pub enum InflightProblem {
    #[error("its size is {size} bytes; splitvisor takes 1 to {MAX_REGION_SIZE}")]
    Size { size: u64 },
    #[error(
        "it describes {got_queues} queues of {got_size} entries; \
         the device has {queues} queues of {size}"
    )]
    Shape {
        queues: u16,
        size: u16,
        got_queues: u16,
        got_size: u16,
    },
    #[error("it lies at offset {offset} and takes {size} bytes, beyond its {len}-byte file")]
    BeyondFile { offset: u64, size: u64, len: u64 },
    #[error("its file cannot be examined ({0})")]
    File(std::io::Error),
}

/// The region a backend keeps its in-flight record in: the memfd it handed over and its
/// GET_INFLIGHT_FD reply, kept across reconnects and dropped by a driver reset.
pub struct InflightRegion {
    file: File,
    reply: VhostUserInflight,
}

impl InflightRegion {
    /// The region a backend answered `asked` with, once checked.
    fn checked(
        asked: &VhostUserInflight,
        reply: VhostUserInflight,
        file: File,
    ) -> Result<InflightRegion, InflightProblem> {
        let len = file.metadata().map_err(InflightProblem::File)?.len();
        check_reply(asked, &reply, len)?;
        Ok(InflightRegion { file, reply })
    }
}

/// Whether `reply` (for the request `asked`) describes a region the vmm can hold and pass on,
/// in a file of `file_len` bytes.
fn check_reply(
    asked: &VhostUserInflight,
    reply: &VhostUserInflight,
    file_len: u64,
) -> Result<(), InflightProblem> {
    let size = reply.mmap_size;
    if size == 0 || size > MAX_REGION_SIZE {
        return Err(InflightProblem::Size { size });
    }
    if (reply.num_queues, reply.queue_size) != (asked.num_queues, asked.queue_size) {
        return Err(InflightProblem::Shape {
            queues: asked.num_queues,
            size: asked.queue_size,
            got_queues: reply.num_queues,
            got_size: reply.queue_size,
        });
    }
    let offset = reply.mmap_offset;
    if offset.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(InflightProblem::BeyondFile {
            offset,
            size,
            len: file_len,
        });
    }
    Ok(())
}

impl VhostUserDevice {
    /// Whether the device holds an in-flight region (and so sends it to every new connection).
    pub fn inflight_tracking(&self) -> bool {
        self.inflight.is_some()
    }

    /// With INFLIGHT_SHMFD negotiated: GET_INFLIGHT_FD unless the device holds a region, then
    /// SET_INFLIGHT_FD with the region. Part of [`Self::start_rings`], after the memory table
    /// and before the first ring (under its deadline).
    pub(super) fn send_inflight_region(&mut self) -> Result<(), FrontendError> {
        if !self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            return Ok(());
        }
        let (name, socket) = (self.name.clone(), self.socket.clone());
        let err = |step| protocol_err(&name, &socket, step);
        if self.inflight.is_none() {
            let asked = VhostUserInflight {
                mmap_size: 0,
                mmap_offset: 0,
                num_queues: u16::try_from(self.queue_sizes.len()).unwrap_or(u16::MAX),
                queue_size: self.queue_sizes.iter().copied().max().unwrap_or(0),
            };
            let (reply, file) = self
                .frontend
                .get_inflight_fd(&asked)
                .map_err(err("GET_INFLIGHT_FD"))?;
            let region = InflightRegion::checked(&asked, reply, file).map_err(|problem| {
                FrontendError::Inflight {
                    device: name.clone(),
                    socket: socket.clone(),
                    problem,
                }
            })?;
            let size = reply.mmap_size;
            tracing::info!(device = %name, size, "the backend's in-flight record region");
            self.inflight = Some(region);
        }
        if let Some(region) = &self.inflight {
            self.frontend
                .set_inflight_fd(&region.reply, region.file.as_raw_fd())
                .map_err(err("SET_INFLIGHT_FD"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked() -> VhostUserInflight {
        VhostUserInflight::new(0, 0, 2, 128)
    }

    #[test]
    fn a_reply_echoing_the_shape_within_its_file_is_taken() {
        let reply = VhostUserInflight::new(4096, 512, 2, 128);
        assert!(check_reply(&asked(), &reply, 4608).is_ok());
    }

    #[test]
    fn an_empty_or_absurd_region_is_refused() {
        for size in [0, MAX_REGION_SIZE + 1, u64::MAX] {
            let reply = VhostUserInflight::new(size, 0, 2, 128);
            match check_reply(&asked(), &reply, u64::MAX) {
                Err(InflightProblem::Size { size: s }) => assert_eq!(s, size),
                other => panic!("size {size}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_region_of_another_shape_is_refused() {
        for (queues, size) in [(1, 128), (2, 256), (3, 64)] {
            let reply = VhostUserInflight::new(4096, 0, queues, size);
            let err = check_reply(&asked(), &reply, 4096).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, InflightProblem::Shape { .. }), "{text}");
            assert!(text.contains("the device has 2 queues of 128"), "{text}");
        }
    }

    #[test]
    fn a_region_beyond_its_file_is_refused() {
        let cases = [(0, 4096, 4095), (1, 4096, 4096), (u64::MAX, 4096, u64::MAX)];
        for (offset, size, len) in cases {
            let reply = VhostUserInflight::new(size, offset, 2, 128);
            let err = check_reply(&asked(), &reply, len).unwrap_err();
            assert!(
                matches!(err, InflightProblem::BeyondFile { .. }),
                "{offset}+{size} in {len}: {err}"
            );
        }
    }
}
