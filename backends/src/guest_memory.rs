//! The guest memory a backend works on: what the frontend's memory table maps, handed to the
//! device by vhost-user-backend's `update_memory` and read by the queue workers.
//!
//! A table is checked before anything reads it: neither vhost-user-backend nor vm-memory
//! compares a region with the file behind it, and a region reaching past the end of its file
//! maps fine but kills the process with SIGBUS at the first read there (the ring's used
//! index, at SET_VRING_ADDR). [`GuestMemoryHandle::set`] refuses such a table.

use std::io;
use std::sync::{PoisonError, RwLock};

use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryRegion};

/// The dirty-page log every region carries: empty until a frontend sends SET_LOG_BASE (a
/// live migration), then every write through vm-memory sets the page's bit in the
/// frontend's log; writes the kernel makes into guest buffers (io_uring, `preadv`, a tap's
/// `readv`) are marked by hand ([`crate::guest_iovecs::GuestIovecs::mark_written`]).
pub use vhost_user_backend::bitmap::BitmapMmapRegion;

/// Guest memory as every backend maps it, each region with its dirty-page log.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<BitmapMmapRegion>;

/// A queue's ring over that memory.
pub type Vring = vhost_user_backend::VringRwLock<GuestMemoryAtomic<GuestMemoryMmap>>;

/// Why a memory table is refused.
#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    #[error(
        "the guest memory region at {gpa:#x} of {len} bytes (from offset {offset} of its file) \
         reaches past the end of the file, which has {file_len} bytes"
    )]
    PastEndOfFile {
        gpa: u64,
        len: u64,
        offset: u64,
        file_len: u64,
    },
    #[error("cannot find the size of the file behind the guest memory region at {gpa:#x}")]
    FileSize {
        gpa: u64,
        #[source]
        source: io::Error,
    },
}

/// Check that every region of `mem` lies inside the file it maps. A region without a file
/// (anonymous memory) and one over something other than a regular file (a device, whose size
/// `fstat` does not give) pass; memfd, tmpfs and hugetlbfs files are regular files.
pub fn check_files(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    for r in mem.iter() {
        let Some(fo) = r.file_offset() else {
            continue;
        };
        let gpa = r.start_addr().0;
        let meta = fo
            .file()
            .metadata()
            .map_err(|source| GuestMemoryError::FileSize { gpa, source })?;
        if !meta.is_file() {
            continue;
        }
        let (offset, len, file_len) = (fo.start(), r.len(), meta.len());
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(GuestMemoryError::PastEndOfFile {
                gpa,
                len,
                offset,
                file_len,
            });
        }
    }
    Ok(())
}

/// The guest memory of the current frontend connection: empty until the frontend sends its
/// memory table, replaced whenever it sends another.
pub struct GuestMemoryHandle {
    mem: RwLock<GuestMemoryAtomic<GuestMemoryMmap>>,
}

impl Default for GuestMemoryHandle {
    fn default() -> Self {
        GuestMemoryHandle {
            mem: RwLock::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())),
        }
    }
}

impl GuestMemoryHandle {
    /// No memory yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current memory (a handle: `.memory()` on it gives a snapshot that stays mapped for
    /// as long as it is held).
    pub fn get(&self) -> io::Result<GuestMemoryAtomic<GuestMemoryMmap>> {
        Ok(self.mem.read().map_err(crate::lock_err)?.clone())
    }

    /// Work on `mem` from now on (the body of `VhostUserBackend::update_memory`), once every
    /// region is checked to lie inside its file ([`check_files`]). A table that fails the
    /// check is an `InvalidInput` error, which ends the frontend's connection.
    ///
    /// vhost-user-backend puts the new table in the memory it shares with the vrings (`mem`
    /// is a handle to that) before it calls `update_memory`, so a refused table is taken out
    /// of it again: from then on the vrings and the workers see no memory at all, and nothing
    /// reads the region. (A worker that reads in the moment between the two cannot be stopped
    /// from here; nor can a frontend that shrinks its file after the check.)
    pub fn set(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let checked = check_files(&mem.memory());
        if checked.is_err() {
            let guard = mem.lock().unwrap_or_else(PoisonError::into_inner);
            guard.replace(GuestMemoryMmap::new());
        }
        *self.mem.write().map_err(crate::lock_err)? = mem;
        checked.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

    #[test]
    fn memory_is_empty_until_set() {
        let handle = GuestMemoryHandle::new();
        assert_eq!(handle.get().unwrap().memory().num_regions(), 0);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        handle.set(GuestMemoryAtomic::new(mem)).unwrap();
        assert_eq!(handle.get().unwrap().memory().num_regions(), 1);
    }

    /// Guest memory of one region over `file_len` bytes of a memfd: `len` bytes of it from
    /// `offset`, at guest address 1 MiB. Mapping past the end of the file succeeds; reading
    /// there is SIGBUS.
    fn over_memfd(file_len: u64, offset: u64, len: usize) -> GuestMemoryAtomic<GuestMemoryMmap> {
        let file = crate::fuzz_harness::memory_file(file_len).unwrap();
        let mmap = MmapRegion::from_file(FileOffset::new(file, offset), len).unwrap();
        let region = GuestRegionMmap::new(mmap, GuestAddress(1 << 20)).unwrap();
        GuestMemoryAtomic::new(GuestMemoryMmap::from_regions(vec![region]).unwrap())
    }

    #[test]
    fn a_region_past_the_end_of_its_file_is_refused_and_taken_out_of_reach() {
        let handle = GuestMemoryHandle::new();
        // exactly the file, and a part of it: taken
        handle.set(over_memfd(4 << 20, 0, 4 << 20)).unwrap();
        handle.set(over_memfd(4 << 20, 1 << 20, 3 << 20)).unwrap();
        assert_eq!(handle.get().unwrap().memory().num_regions(), 1);
        // 4 MiB over a 1 MiB file, and 4 MiB from 1 MiB into a 4 MiB file: refused
        for (file_len, offset) in [(1 << 20, 0), (4 << 20, 1 << 20)] {
            let mem = over_memfd(file_len, offset, 4 << 20);
            let e = handle.set(mem.clone()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            let text = e.to_string();
            assert!(
                text.contains("0x100000") && text.contains("4194304"),
                "{text}"
            );
            assert!(text.contains(&format!("{file_len} bytes")), "{text}");
            // vhost-user-backend had put it in the vrings' memory before asking: gone again
            assert_eq!(mem.memory().num_regions(), 0);
            assert_eq!(handle.get().unwrap().memory().num_regions(), 0);
        }
    }
}
