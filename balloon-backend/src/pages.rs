//! Giving guest memory back to the host. Guest RAM is the vmm's shared memfd, which this
//! process maps from SET_MEM_TABLE; `fallocate(PUNCH_HOLE | KEEP_SIZE)` on that memfd frees
//! the pages for every process mapping it (a shared memfd page is not freed by
//! `MADV_DONTNEED`, which only drops one process's mapping of it — why an in-process balloon
//! built on it does not shrink memfd-backed guests). On a hugepage-backed memfd only whole
//! huge pages can be punched: a huge page goes back once all of its 4 KiB pages are in the
//! balloon; until then the partial ones are only tracked.
//!
//! Every page frame number and range comes from the guest and is checked against guest RAM;
//! pages outside it or already in the balloon are counted and skipped.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;

use backends::guest_memory::GuestMemoryMmap;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::virtio_balloon::{PAGE_SHIFT, PAGE_SIZE};

/// A guest RAM region as far as releasing pages goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub len: u64,
    /// The backing's page size: 4 KiB, or 2 MiB/1 GiB for hugetlbfs.
    pub page_size: u64,
}

/// Where guest RAM lives and how to free part of it.
pub trait Backing {
    /// The region holding guest address `gpa`.
    fn region(&self, gpa: u64) -> Option<Region>;
    /// Free `[gpa, gpa + len)`, inside one region and aligned to its page size.
    fn punch(&self, gpa: u64, len: u64) -> io::Result<()>;
}

/// What one request did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes handed back to the host.
    pub released: u64,
    /// Pages (or ranges) outside guest RAM.
    pub invalid: u64,
    /// Pages already in the balloon (inflate) or not in it (deflate).
    pub duplicate: u64,
    /// Pages accepted.
    pub pages: u64,
}

/// Which 4 KiB guest pages are in the balloon: one bit each, in words of 64 pages that exist
/// only while one of their pages is in the balloon. A page is put in only once the backing
/// says it is guest RAM, so the bookkeeping grows with the guest RAM actually present (at
/// most a word per 64 of its pages), never with how high its addresses reach: a region at
/// the top of the address space costs no more than one at 0.
#[derive(Default)]
pub struct Balloon {
    /// Page frame number / 64 → the word's bits; no word is zero.
    words: BTreeMap<u64, u64>,
    /// Bits set in `words`.
    pages: u64,
}

impl Balloon {
    /// An empty balloon.
    pub fn new() -> Balloon {
        Balloon::default()
    }

    fn get(&self, pfn: u64) -> bool {
        self.words
            .get(&(pfn / 64))
            .is_some_and(|w| w & (1 << (pfn % 64)) != 0)
    }

    fn set(&mut self, pfn: u64, on: bool) {
        let (key, bit) = (pfn / 64, 1u64 << (pfn % 64));
        if on {
            let w = self.words.entry(key).or_insert(0);
            if *w & bit == 0 {
                *w |= bit;
                self.pages += 1;
            }
        } else if let Some(w) = self.words.get_mut(&key) {
            if *w & bit != 0 {
                *w &= !bit;
                self.pages -= 1;
                if *w == 0 {
                    self.words.remove(&key);
                }
            }
        }
    }

    /// Pages in the balloon.
    pub fn count(&self) -> u64 {
        self.pages
    }

    /// The pages in the balloon as runs (first page frame number, count), in order: what a
    /// snapshot keeps of it.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (&key, &word) in &self.words {
            for bit in (0..64).filter(|b| word & (1 << b) != 0) {
                let pfn = key * 64 + bit;
                match out.last_mut() {
                    Some((start, n)) if *start + *n == pfn => *n += 1,
                    _ => out.push((pfn, 1)),
                }
            }
        }
        out
    }

    /// Put `count` pages from `start` in the balloon's books (a restored balloon: the host
    /// already gave them back).
    pub fn restore_run(&mut self, start: u64, count: u64) {
        for pfn in start..start.saturating_add(count) {
            self.set(pfn, true);
        }
    }

    /// Words of bookkeeping held (what the balloon costs: 8 bytes and a map entry each).
    #[cfg(test)]
    pub fn words(&self) -> usize {
        self.words.len()
    }

    /// Whether every 4 KiB page of the huge page at `start` is in the balloon (a word at a
    /// time: 4096 look-ups for a 1 GiB page, not 262144).
    fn whole(&self, start: u64, size: u64) -> bool {
        let (mut pfn, end) = (start >> PAGE_SHIFT, (start + size) >> PAGE_SHIFT);
        while pfn < end {
            let stop = ((pfn / 64 + 1) * 64).min(end);
            let n = stop - pfn;
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1 << n) - 1) << (pfn % 64)
            };
            let word = self.words.get(&(pfn / 64)).copied().unwrap_or(0);
            if word & mask != mask {
                return false;
            }
            pfn = stop;
        }
        true
    }

    /// The guest put these pages in the balloon: free them on the host.
    pub fn inflate(&mut self, pfns: &[u32], backing: &dyn Backing) -> Outcome {
        let mut out = Outcome::default();
        let mut sorted: Vec<u64> = pfns.iter().map(|p| u64::from(*p)).collect();
        sorted.sort_unstable();
        let mut runs: Vec<(u64, u64, Region)> = Vec::new(); // (gpa, len, region)
        let mut last = None;
        for pfn in sorted {
            let gpa = pfn << PAGE_SHIFT;
            let Some(region) = backing
                .region(gpa)
                .filter(|r| gpa + PAGE_SIZE <= r.start + r.len)
            else {
                out.invalid += 1;
                continue;
            };
            if last == Some(pfn) || self.get(pfn) {
                out.duplicate += 1;
                continue;
            }
            last = Some(pfn);
            self.set(pfn, true);
            out.pages += 1;
            match runs.last_mut() {
                Some((start, len, r)) if *start + *len == gpa && *r == region => *len += PAGE_SIZE,
                _ => runs.push((gpa, PAGE_SIZE, region)),
            }
        }
        // the runs are in address order; two of them can share a huge page, which is looked
        // at (and released) once
        let mut done = 0;
        for (gpa, len, region) in runs {
            out.released += self.release_run(gpa, len, region, backing, &mut done);
        }
        out
    }

    /// Free a run of newly inflated pages: all of it with small pages; with huge pages, each
    /// huge page the run touches that is now entirely in the balloon. Backing pages below
    /// `done` were seen to by an earlier run; `done` moves past this run's.
    fn release_run(
        &self,
        gpa: u64,
        len: u64,
        region: Region,
        backing: &dyn Backing,
        done: &mut u64,
    ) -> u64 {
        let ps = region.page_size;
        let (start, end) = if ps == PAGE_SIZE {
            (gpa, gpa + len)
        } else {
            (gpa & !(ps - 1), (gpa + len).div_ceil(ps) * ps)
        };
        let mut released = 0;
        let mut at = start.max(*done);
        *done = end.max(*done);
        while at < end {
            let n = if ps == PAGE_SIZE { end - at } else { ps };
            if (ps == PAGE_SIZE || self.whole(at, ps)) && at + n <= region.start + region.len {
                match backing.punch(at, n) {
                    Ok(()) => released += n,
                    Err(e) => tracing::warn!(gpa = at, len = n, "cannot release guest memory: {e}"),
                }
            }
            at += n;
        }
        released
    }

    /// The guest took these pages back: they are usable again (they read as zeroes).
    pub fn deflate(&mut self, pfns: &[u32], backing: &dyn Backing) -> Outcome {
        let mut out = Outcome::default();
        for &pfn in pfns {
            let pfn = u64::from(pfn);
            if backing.region(pfn << PAGE_SHIFT).is_none() {
                out.invalid += 1;
            } else if !self.get(pfn) {
                out.duplicate += 1;
            } else {
                self.set(pfn, false);
                out.pages += 1;
            }
        }
        out
    }
}

/// Free page reporting: the guest says `[gpa, gpa + len)` is free right now. It stays the
/// guest's (not in the balloon); only whole backing pages inside the range are freed.
pub fn report(gpa: u64, len: u64, backing: &dyn Backing) -> Outcome {
    let mut out = Outcome::default();
    let end = gpa.checked_add(len);
    let region = backing.region(gpa);
    let (Some(end), Some(region)) = (end, region) else {
        out.invalid += 1;
        return out;
    };
    if end > region.start + region.len {
        out.invalid += 1;
        return out;
    }
    let ps = region.page_size;
    let (start, stop) = (gpa.div_ceil(ps) * ps, end & !(ps - 1));
    if start < stop {
        match backing.punch(start, stop - start) {
            Ok(()) => out.released = stop - start,
            Err(e) => tracing::warn!(gpa = start, "cannot release reported memory: {e}"),
        }
    }
    out.pages = len >> PAGE_SHIFT;
    out
}

/// Guest RAM as this process mapped it from the frontend's memory table.
pub struct GuestBacking<'a>(pub &'a GuestMemoryMmap);

fn page_size_of(fo: &FileOffset) -> u64 {
    // SAFETY: fstat writes into the stat buffer we own; the descriptor is the region's.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fo.file().as_raw_fd(), &mut st) } == 0 && st.st_blksize > 0 {
        // hugetlbfs reports its huge page size as the block size; tmpfs/memfd a small page
        (st.st_blksize as u64).max(PAGE_SIZE)
    } else {
        PAGE_SIZE
    }
}

impl Backing for GuestBacking<'_> {
    fn region(&self, gpa: u64) -> Option<Region> {
        let r = self.0.find_region(GuestAddress(gpa))?;
        let page_size = r.file_offset().map_or(PAGE_SIZE, page_size_of);
        Some(Region {
            start: r.start_addr().0,
            len: r.len(),
            page_size,
        })
    }

    fn punch(&self, gpa: u64, len: u64) -> io::Result<()> {
        let r = self
            .0
            .find_region(GuestAddress(gpa))
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fo = r
            .file_offset()
            .ok_or_else(|| io::Error::other("guest memory region without a file"))?;
        let offset = fo.start() + (gpa - r.start_addr().0);
        let off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: fallocate changes only the file's allocation; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                fo.file().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // the pages read as zeros now: a live migration's log must say so
        vm_memory::bitmap::Bitmap::mark_dirty(
            &r.bitmap(),
            (gpa - r.start_addr().0) as usize,
            len as usize,
        );
        Ok(())
    }
}
