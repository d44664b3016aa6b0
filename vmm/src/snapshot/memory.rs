//! Guest RAM in a snapshot: `memory.bin`, a sparse file laid out as the memfd is (offset N of
//! the file is offset N of the memfd), holding only the pages that hold something. Pages the
//! guest never touched and pages the balloon gave back are holes in the memfd (found with
//! SEEK_DATA/SEEK_HOLE) and stay holes; pages of zeros are not written either. A manifest in
//! the state file lists the 2 MiB chunks written, each with its CRC32, and restoring checks
//! each chunk before it goes into the new VM's memfd.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The section version of [`MemoryManifest`].
pub const VERSION: u32 = 1;
const CHUNK: u64 = 2 << 20;
const PAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MemoryImageError {
    #[error("cannot {what} (guest RAM at offset {offset:#x})")]
    Io {
        what: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the snapshot's guest RAM is damaged at offset {0:#x} (CRC mismatch)")]
    Crc(u64),
    #[error("the snapshot's guest RAM is {saved} bytes; this VM has {ours}")]
    Size { saved: u64, ours: u64 },
    #[error("the snapshot's memory list names bytes {offset:#x}+{len:#x}, outside its {size} bytes of RAM")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}

/// What memory.bin holds: the RAM size and each chunk written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryManifest {
    pub size: u64,
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

fn io(what: &'static str, offset: u64) -> impl FnOnce(std::io::Error) -> MemoryImageError {
    move |source| MemoryImageError::Io {
        what,
        offset,
        source,
    }
}

/// The next `(data start, data end)` of `file` at or after `from` (before `end`), if any.
pub(crate) fn next_data(
    file: &File,
    from: u64,
    end: u64,
) -> Result<Option<(u64, u64)>, MemoryImageError> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on our own open descriptor; no memory is passed.
    let data = unsafe { libc::lseek(fd, from as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None), // nothing but holes from here
            _ => Err(io("find the guest's data", from)(e)),
        };
    }
    let data = data as u64;
    if data >= end {
        return Ok(None);
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
    if hole < 0 {
        return Err(io("find the guest's data", data)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(Some((data, (hole as u64).min(end))))
}

/// Write the first `size` bytes of `memfd` (the guest's RAM, the VM stopped) to `out`,
/// sparsely. `progress` hears the bytes looked at so far.
pub fn save(
    memfd: &File,
    size: u64,
    out: &File,
    progress: &mut dyn FnMut(u64),
) -> Result<MemoryManifest, MemoryImageError> {
    out.set_len(size).map_err(io("size memory.bin", size))?;
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while let Some((start, end)) = next_data(memfd, pos, size)? {
        let mut at = start - start % PAGE as u64;
        while at < end {
            let len = (end - at).min(CHUNK - at % CHUNK);
            let chunk = &mut buf[..len as usize];
            memfd
                .read_exact_at(chunk, at)
                .map_err(io("read guest RAM", at))?;
            // runs of non-zero pages, one write each
            let data: Vec<bool> = chunk
                .chunks(PAGE)
                .map(|p| p.iter().any(|&b| b != 0))
                .collect();
            let mut first = 0;
            for run in data.chunk_by(|a, b| a == b) {
                let end = first + run.len();
                if run[0] {
                    let bytes = &chunk[first * PAGE..(end * PAGE).min(chunk.len())];
                    let off = at + (first * PAGE) as u64;
                    out.write_all_at(bytes, off)
                        .map_err(io("write memory.bin", off))?;
                }
                first = end;
            }
            if data.contains(&true) {
                chunks.push(Chunk {
                    offset: at,
                    len,
                    crc: crc32fast::hash(chunk),
                });
            }
            at += len;
            progress(at);
        }
        pos = end;
    }
    Ok(MemoryManifest { size, chunks })
}

/// Put the saved RAM into a new VM's (`size` bytes, all zeros), checking each chunk's CRC.
/// Written into the `memfd` when given (the kernel allocates the pages; the guest maps them
/// as it touches them); a hugetlbfs memfd takes no `write`, so then, or without a memfd,
/// through the guest's mapping.
pub fn restore(
    manifest: &MemoryManifest,
    image: &File,
    ram: &GuestMemoryMmap,
    size: u64,
    mut memfd: Option<&File>,
) -> Result<(), MemoryImageError> {
    if manifest.size != size {
        return Err(MemoryImageError::Size {
            saved: manifest.size,
            ours: size,
        });
    }
    let mut buf = vec![0u8; CHUNK as usize];
    for c in &manifest.chunks {
        let inside = c.len <= CHUNK && c.offset.checked_add(c.len).is_some_and(|e| e <= size);
        let gpa = guest_address(ram, c.offset).filter(|_| inside);
        let Some(gpa) = gpa else {
            return Err(MemoryImageError::OutOfRange {
                offset: c.offset,
                len: c.len,
                size,
            });
        };
        let chunk = &mut buf[..c.len as usize];
        image
            .read_exact_at(chunk, c.offset)
            .map_err(io("read memory.bin", c.offset))?;
        if crc32fast::hash(chunk) != c.crc {
            return Err(MemoryImageError::Crc(c.offset));
        }
        if let Some(fd) = memfd {
            match fd.write_all_at(chunk, c.offset) {
                Ok(()) => continue,
                // hugetlbfs: no write; the mapping from here on
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => memfd = None,
                Err(e) => return Err(io("write the guest RAM memfd", c.offset)(e)),
            }
        }
        ram.write_slice(chunk, gpa)
            .map_err(|e| io("write guest RAM", c.offset)(std::io::Error::other(e.to_string())))?;
    }
    Ok(())
}

/// The guest address of memfd offset `offset` (regions are laid out in the memfd in order).
pub(crate) fn guest_address(ram: &GuestMemoryMmap, offset: u64) -> Option<GuestAddress> {
    ram.iter().find_map(|r| {
        let start = r.file_offset()?.start();
        (start..start + r.len())
            .contains(&offset)
            .then(|| GuestAddress(r.start_addr().0 + (offset - start)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::memory::test_ram as ram;

    fn scratch(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("sv-mem-{name}-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, f)
    }

    #[test]
    fn ram_comes_back_byte_for_byte_and_untouched_pages_stay_holes() {
        let src = ram(16);
        let m = src.memory();
        m.write_slice(b"first page", GuestAddress(0)).unwrap();
        m.write_slice(&[0xab; 5000], GuestAddress(3 << 20)).unwrap();
        m.write_slice(b"last", GuestAddress((16 << 20) - 4))
            .unwrap();
        // a written page of zeros is not stored either
        m.write_slice(&[0u8; 4096], GuestAddress(8 << 20)).unwrap();
        let (path, out) = scratch("save");
        let manifest = save(src.memfd().unwrap(), src.size(), &out, &mut |_| {}).unwrap();
        assert_eq!(manifest.chunks.len(), 3, "{manifest:?}");
        // SAFETY: fstat fills the struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a live stat buffer.
        assert_eq!(unsafe { libc::fstat(out.as_raw_fd(), &mut st) }, 0);
        assert!(
            st.st_blocks * 512 <= 64 << 10,
            "{} bytes on disk",
            st.st_blocks * 512
        );

        let mut a = vec![0u8; 16 << 20];
        src.memory().read_slice(&mut a, GuestAddress(0)).unwrap();
        // into the memfd, and (as for hugetlbfs) through the mapping
        for through_memfd in [true, false] {
            let dst = ram(16);
            let fd = dst.memfd().filter(|_| through_memfd);
            restore(&manifest, &out, dst.memory(), dst.size(), fd).unwrap();
            let mut b = vec![0u8; 16 << 20];
            dst.memory().read_slice(&mut b, GuestAddress(0)).unwrap();
            assert!(a == b, "the restored RAM differs (memfd: {through_memfd})");
        }
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_damaged_image_or_another_size_is_refused() {
        let src = ram(8);
        src.memory()
            .write_slice(b"data", GuestAddress(1 << 20))
            .unwrap();
        let (path, out) = scratch("damaged");
        let manifest = save(src.memfd().unwrap(), src.size(), &out, &mut |_| {}).unwrap();
        out.write_all_at(b"X", (1 << 20) + 2).unwrap();
        let dst = ram(8);
        let err = restore(&manifest, &out, dst.memory(), dst.size(), dst.memfd()).unwrap_err();
        assert!(
            // the chunk holding the damage (chunks start where the RAM's data does: at 1 MiB
            // in 4 KiB pages, at 0 in 2 MiB ones)
            matches!(err, MemoryImageError::Crc(o) if o <= 1 << 20 && (1 << 20) - o < CHUNK),
            "{err}"
        );
        let bigger = ram(16);
        let err = restore(&manifest, &out, bigger.memory(), bigger.size(), None).unwrap_err();
        assert!(matches!(err, MemoryImageError::Size { .. }), "{err}");
        let mut outside = manifest.clone();
        outside.chunks[0].offset = (8 << 20) - 100;
        let err = restore(&outside, &out, dst.memory(), dst.size(), None).unwrap_err();
        assert!(matches!(err, MemoryImageError::OutOfRange { .. }), "{err}");
        let _ = std::fs::remove_file(path);
    }
}
