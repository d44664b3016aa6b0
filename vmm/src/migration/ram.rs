//! Guest RAM over the migration stream: Ram frames of `memfd offset u64 | bytes`, at most
//! 2 MiB each. The first pass sends only what holds data (holes and pages of zeros are
//! skipped: the destination's RAM starts as zeros); a dirty round sends each dirty page as
//! it is now, zeros included.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::Bytes;

use super::dirty::PAGE;
use super::wire::{Conn, Kind, WireError};
use crate::memory::GuestRam;
use crate::snapshot::memory::{guest_address, next_data};

const CHUNK: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RamError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("cannot read guest RAM at offset {offset:#x}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the guest's data")]
    Holes(#[from] crate::snapshot::memory::MemoryImageError),
    #[error(
        "a RAM frame for bytes {offset:#x}+{len:#x} lies outside the VM's {size} bytes of RAM"
    )]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("cannot write guest RAM at offset {offset:#x}: {why}")]
    Write { offset: u64, why: String },
    #[error("the migration was cancelled (vm.cancel-migration)")]
    Cancelled,
}

/// Sends RAM from the source's file, counting what it sent.
pub struct RamSender<'a> {
    memfd: &'a File,
    size: u64,
    buf: Vec<u8>,
    /// Bytes of RAM sent so far.
    pub bytes: u64,
    /// Counts what is sent, and says when to stop.
    progress: Option<&'a super::Progress>,
}

impl<'a> RamSender<'a> {
    pub fn new(memfd: &'a File, size: u64) -> RamSender<'a> {
        RamSender {
            memfd,
            size,
            buf: vec![0; CHUNK as usize],
            bytes: 0,
            progress: None,
        }
    }

    /// Report to `progress` and stop when it is cancelled.
    pub fn with_progress(mut self, progress: &'a super::Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    fn read(&mut self, offset: u64, len: u64) -> Result<(), RamError> {
        self.memfd
            .read_exact_at(&mut self.buf[..len as usize], offset)
            .map_err(|source| RamError::Read { offset, source })
    }

    fn send_run(
        &mut self,
        conn: &mut Conn,
        offset: u64,
        from: usize,
        to: usize,
    ) -> Result<(), RamError> {
        if self.progress.is_some_and(|p| p.cancelled()) {
            return Err(RamError::Cancelled);
        }
        let bytes = &self.buf[from..to];
        conn.send_parts(Kind::Ram, &[&(offset + from as u64).to_le_bytes(), bytes])?;
        self.bytes += bytes.len() as u64;
        if let Some(p) = self.progress {
            p.add_ram(bytes.len() as u64);
        }
        Ok(())
    }

    /// The first pass: everything that holds data.
    pub fn send_all(&mut self, conn: &mut Conn) -> Result<(), RamError> {
        let mut pos = 0;
        while let Some((start, end)) = next_data(self.memfd, pos, self.size)? {
            let mut at = start - start % PAGE;
            while at < end {
                let len = (end - at).min(CHUNK - at % CHUNK);
                self.read(at, len)?;
                // runs of non-zero pages, one frame each
                let data: Vec<bool> = self.buf[..len as usize]
                    .chunks(PAGE as usize)
                    .map(|p| p.iter().any(|&b| b != 0))
                    .collect();
                let mut first = 0;
                for run in data.chunk_by(|a, b| a == b) {
                    let last = first + run.len();
                    if run[0] {
                        let to = (last * PAGE as usize).min(len as usize);
                        self.send_run(conn, at, first * PAGE as usize, to)?;
                    }
                    first = last;
                }
                at += len;
            }
            pos = end;
        }
        Ok(())
    }

    /// A dirty round: each page of `pages` (file offsets, ascending), runs of neighbours in
    /// one frame.
    pub fn send_pages(&mut self, conn: &mut Conn, pages: &[u64]) -> Result<(), RamError> {
        let mut i = 0;
        while i < pages.len() {
            let start = pages[i];
            let mut n = 1;
            // within one 2 MiB chunk: never across a region's end (regions start on 2 MiB
            // boundaries of the file)
            while i + n < pages.len()
                && pages[i + n] == start + n as u64 * PAGE
                && start % CHUNK + (n as u64 + 1) * PAGE <= CHUNK
            {
                n += 1;
            }
            let len = (n as u64 * PAGE).min(self.size.saturating_sub(start));
            self.read(start, len)?;
            self.send_run(conn, start, 0, len as usize)?;
            i += n;
        }
        Ok(())
    }
}

/// Writes Ram frames into the destination's RAM.
pub struct RamReceiver<'a> {
    ram: &'a GuestRam,
    /// Writes go to the file while it takes them (hugetlbfs does not: then the mapping).
    through_file: bool,
    pub bytes: u64,
}

impl<'a> RamReceiver<'a> {
    pub fn new(ram: &'a GuestRam) -> RamReceiver<'a> {
        RamReceiver {
            ram,
            through_file: ram.memfd().is_some(),
            bytes: 0,
        }
    }

    /// One Ram frame's body, every byte of it checked to lie inside the RAM.
    pub fn put(&mut self, body: &[u8]) -> Result<(), RamError> {
        let size = self.ram.size();
        let Some((head, bytes)) = body.split_first_chunk::<8>() else {
            return Err(RamError::OutOfRange {
                offset: 0,
                len: 0,
                size,
            });
        };
        let offset = u64::from_le_bytes(*head);
        let len = bytes.len() as u64;
        let inside = offset.checked_add(len).is_some_and(|e| e <= size) && len <= CHUNK;
        let gpa = guest_address(self.ram.memory(), offset).filter(|_| inside);
        // one frame never crosses from one region into the next (the source sends runs
        // inside 2 MiB chunks; regions start on 2 MiB boundaries)
        let Some(gpa) = gpa else {
            return Err(RamError::OutOfRange { offset, len, size });
        };
        if self.through_file {
            match self.ram.memfd().map(|f| f.write_all_at(bytes, offset)) {
                Some(Ok(())) => {
                    self.bytes += len;
                    return Ok(());
                }
                Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => self.through_file = false,
                Some(Err(e)) => {
                    return Err(RamError::Write {
                        offset,
                        why: e.to_string(),
                    })
                }
                None => self.through_file = false,
            }
        }
        self.ram
            .memory()
            .write_slice(bytes, gpa)
            .map_err(|e| RamError::Write {
                offset,
                why: e.to_string(),
            })?;
        self.bytes += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use vm_memory::GuestAddress;

    use crate::memory::test_ram as ram;

    fn all(r: &GuestRam) -> Vec<u8> {
        let mut v = vec![0u8; r.size() as usize];
        r.memory().read_slice(&mut v, GuestAddress(0)).unwrap();
        v
    }

    #[test]
    fn a_full_pass_then_dirty_pages_give_the_same_ram_and_skip_zeros() {
        let src = ram(8);
        let m = src.memory();
        m.write_slice(&[7u8; 5000], GuestAddress(4096 * 3)).unwrap();
        m.write_slice(b"end", GuestAddress((8 << 20) - 3)).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::Unix(a), Conn::Unix(b));
        let dst = ram(8);
        let memfd = src.memfd().unwrap().try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let mut s = RamSender::new(&memfd, 8 << 20);
            s.send_all(&mut a).unwrap();
            let first = s.bytes;
            // a page rewritten with zeros, and one with data: both go in a dirty round
            s.send_pages(&mut a, &[4096 * 3, 4096 * 4, 4096 * 100])
                .unwrap();
            a.send(Kind::State, b"").unwrap();
            first
        });
        let mut r = RamReceiver::new(&dst);
        // the dirty round reads the pages as they are when it runs
        while let Ok(f) = b.recv() {
            if f.kind == Kind::State {
                break;
            }
            r.put(&f.body).unwrap();
        }
        let first = sender.join().unwrap();
        assert_eq!(first, 3 * 4096, "only the pages holding data: {first}");
        assert!(all(&src) == all(&dst), "the RAM differs");
        let mut outside = ((8u64 << 20) - 2).to_le_bytes().to_vec();
        outside.extend_from_slice(b"xyz");
        assert!(matches!(r.put(&outside), Err(RamError::OutOfRange { .. })));
        assert!(matches!(r.put(b"short"), Err(RamError::OutOfRange { .. })));
    }

    #[test]
    fn a_run_of_dirty_pages_stops_at_a_2_mib_boundary() {
        let src = ram(8);
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::Unix(a), Conn::Unix(b));
        // four neighbours across the boundary at 2 MiB (where a region may end)
        let pages: Vec<u64> = (0..4).map(|i| CHUNK - 2 * PAGE + i * PAGE).collect();
        let mut s = RamSender::new(src.memfd().unwrap(), 8 << 20);
        s.send_pages(&mut a, &pages).unwrap();
        a.send(Kind::State, b"").unwrap();
        let mut frames = Vec::new();
        while let Ok(f) = b.recv() {
            if f.kind == Kind::State {
                break;
            }
            let at = u64::from_le_bytes(f.body[..8].try_into().unwrap());
            frames.push((at, f.body.len() as u64 - 8));
        }
        assert_eq!(
            frames,
            vec![(CHUNK - 2 * PAGE, 2 * PAGE), (CHUNK, 2 * PAGE)]
        );
    }
}
