//! Refcounts: which host clusters are in use, and cluster allocation.
//!
//! Crash safety rests on two rules:
//! - a cluster is referenced (by an L1/L2 entry) only after its refcount is on stable storage:
//!   clusters are reserved in batches (refcount 1 written, then one `fdatasync`) and handed out
//!   from the reserve; a crash leaves at most the unused reserve leaked, never a reference to a
//!   free cluster. Clean shutdown gives the unused reserve back.
//! - a cluster whose last reference was removed is freed (refcount decremented) only after the
//!   removal is on stable storage (at the next flush), so it cannot be reused while an old
//!   reference might still come back after a crash.
//!
//! Allocation is bounded: the free-cluster search starts from a hint, skips refcount blocks
//! known to be full (a free count per block, kept up to date) and gives up a few clusters past
//! the end of the file (where a sound image has only free clusters), so a table of full blocks
//! fails the write instead of spinning. Blocks are cached up to a memory cap, oldest dropped
//! first (write-through, so dropping is free). Refcount block offsets are checked when a block
//! is read; a missing block is never placed on the header or other metadata.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::layout::{Area, Layout, LayoutError};

/// Clusters reserved per `fdatasync`.
const RESERVE_BATCH: usize = 32;
/// How far past the end of the file (or the hint) the free search looks.
const SCAN_SLACK: u64 = RESERVE_BATCH as u64 + 2;
/// Memory for cached refcount blocks, and the fewest blocks cached whatever the cluster size.
const BLOCK_CACHE_BYTES: usize = 16 << 20;
const BLOCK_CACHE_MIN: usize = 4;
/// Reserved bits of a refcount table entry.
const REFT_OFFSET_MASK: u64 = !511;
/// Free count not known yet (the block was never read).
const UNKNOWN: u32 = u32::MAX;

pub struct Refcounts {
    cluster_bits: u32,
    /// log2 of the refcount width in bits (3..=6).
    order: u32,
    table_offset: u64,
    table: Vec<u64>,
    /// Free entries per refcount block (by table index), `UNKNOWN` until the block is read.
    free: Vec<u32>,
    /// Refcount blocks in memory, raw (big-endian entries), by their offset; oldest first in
    /// `cached`.
    blocks: HashMap<u64, Vec<u8>>,
    cached: VecDeque<u64>,
    /// First cluster index that may be free.
    free_hint: u64,
    /// Clusters with refcount 1 on stable storage, not referenced yet.
    reserve: VecDeque<u64>,
    /// Clusters (by offset) whose refcount drops by one at the next flush.
    pending_free: Vec<u64>,
}

impl Refcounts {
    /// Read the refcount table (its size was checked with the header); the refcount blocks
    /// it points to are recorded in `layout`.
    pub fn load(
        file: &File,
        layout: &mut Layout,
        cluster_bits: u32,
        order: u32,
        table_offset: u64,
        table_clusters: u32,
    ) -> io::Result<Refcounts> {
        let mut raw = vec![0u8; (u64::from(table_clusters) << cluster_bits) as usize];
        file.read_exact_at(&mut raw, table_offset)?;
        let table: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])) & REFT_OFFSET_MASK)
            .collect();
        for &offset in table.iter().filter(|&&o| o != 0) {
            layout.add(Area::RefcountBlock, offset);
        }
        Ok(Refcounts {
            cluster_bits,
            order,
            table_offset,
            free: vec![UNKNOWN; table.len()],
            table,
            blocks: HashMap::new(),
            cached: VecDeque::new(),
            free_hint: 0,
            reserve: VecDeque::new(),
            pending_free: Vec::new(),
        })
    }

    fn entry_bytes(&self) -> usize {
        (1usize << self.order) / 8
    }

    fn entries_per_block(&self) -> u64 {
        (1u64 << self.cluster_bits) / self.entry_bytes() as u64
    }

    fn locate(&self, cluster: u64) -> Result<(usize, usize), LayoutError> {
        let per = self.entries_per_block();
        let t = cluster / per;
        if t >= self.table.len() as u64 {
            return Err(LayoutError::BeyondRefcountTable { cluster });
        }
        Ok((t as usize, (cluster % per) as usize))
    }

    /// Refcount block `t` in memory (read, checked and counted on first use); `None` when the
    /// table has no block there (every cluster it would cover is free).
    fn block(&mut self, file: &File, layout: &Layout, t: usize) -> io::Result<Option<&mut [u8]>> {
        let offset = self.table[t];
        if offset == 0 {
            return Ok(None);
        }
        if !self.blocks.contains_key(&offset) {
            layout.check_cluster(Area::RefcountBlock, offset)?;
            let cap = (BLOCK_CACHE_BYTES >> self.cluster_bits).max(BLOCK_CACHE_MIN);
            while self.blocks.len() >= cap {
                let Some(old) = self.cached.pop_front() else {
                    break;
                };
                self.blocks.remove(&old);
            }
            let mut raw = vec![0u8; 1 << self.cluster_bits];
            file.read_exact_at(&mut raw, offset)?;
            self.blocks.insert(offset, raw);
            self.cached.push_back(offset);
        }
        let n = self.entry_bytes();
        let block = self
            .blocks
            .get_mut(&offset)
            .ok_or_else(|| io::Error::other("refcount block cache lost a block"))?;
        if self.free[t] == UNKNOWN {
            let free = block.chunks_exact(n).filter(|e| e.iter().all(|b| *b == 0));
            self.free[t] = free.count() as u32;
        }
        Ok(Some(block.as_mut_slice()))
    }

    /// The refcount of host cluster index `cluster`.
    pub fn get(&mut self, file: &File, layout: &Layout, cluster: u64) -> io::Result<u64> {
        let (t, i) = self.locate(cluster)?;
        let n = self.entry_bytes();
        Ok(match self.block(file, layout, t)? {
            None => 0,
            Some(block) => block[i * n..(i + 1) * n]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        })
    }

    /// Set the refcount of `cluster` (write-through).
    fn set(
        &mut self,
        file: &File,
        layout: &mut Layout,
        cluster: u64,
        value: u64,
    ) -> io::Result<()> {
        let (t, i) = self.locate(cluster)?;
        if self.table[t] == 0 {
            self.new_block(file, layout, t, cluster)?;
        }
        let block_off = self.table[t];
        let n = self.entry_bytes();
        let at = block_off + (i * n) as u64;
        layout.check_write(Area::RefcountBlock, at, n as u64, Some(Area::RefcountBlock))?;
        let bytes = &value.to_be_bytes()[8 - n..];
        let block = self
            .block(file, layout, t)?
            .ok_or_else(|| io::Error::other("refcount block vanished"))?;
        let entry = &mut block[i * n..(i + 1) * n];
        let was_free = entry.iter().all(|b| *b == 0);
        entry.copy_from_slice(bytes);
        match (was_free, value == 0) {
            (true, false) => self.free[t] = self.free[t].saturating_sub(1),
            (false, true) => self.free[t] = self.free[t].saturating_add(1),
            _ => {}
        }
        file.write_all_at(bytes, at)
    }

    /// Create refcount block `t`, placed inside the range it covers (so it counts itself) on
    /// the first cluster that is not `avoid`, not the header and no other metadata. Metadata
    /// clusters in its range get refcount 1 (they are in use, whatever the missing block
    /// said). The block is on disk before the table points to it.
    fn new_block(
        &mut self,
        file: &File,
        layout: &mut Layout,
        t: usize,
        avoid: u64,
    ) -> io::Result<()> {
        let per = self.entries_per_block();
        let first = t as u64 * per;
        let metadata = layout.metadata_clusters(first, first + per);
        let at = (first..first + per)
            .find(|c| *c != avoid && metadata.binary_search(c).is_err())
            .ok_or(LayoutError::NoFreeCluster { scanned: per })?;
        let offset = at << self.cluster_bits;
        let cs = 1u64 << self.cluster_bits;
        let table_entry_at = self.table_offset + t as u64 * 8;
        layout.grow_to_cluster(at);
        layout.check_write(Area::RefcountBlock, offset, cs, None)?;
        layout.check_write(
            Area::RefcountTable,
            table_entry_at,
            8,
            Some(Area::RefcountTable),
        )?;
        let mut raw = vec![0u8; cs as usize];
        let n = self.entry_bytes();
        for c in metadata.iter().copied().chain([at]) {
            if c != at {
                tracing::warn!("qcow2: metadata cluster {c} had no refcount block; counted now");
            }
            raw[((c - first) as usize + 1) * n - 1] = 1;
        }
        file.write_all_at(&raw, offset)?;
        file.sync_data()?;
        layout.add(Area::RefcountBlock, offset);
        self.free[t] = (per - metadata.len() as u64 - 1) as u32;
        self.table[t] = offset;
        file.write_all_at(&offset.to_be_bytes(), table_entry_at)?;
        file.sync_data()
    }

    /// One free host cluster (offset) whose refcount 1 is on stable storage.
    pub fn allocate(&mut self, file: &File, layout: &mut Layout) -> io::Result<u64> {
        if self.reserve.is_empty() {
            self.fill_reserve(file, layout)?;
        }
        self.reserve
            .pop_front()
            .ok_or_else(|| io::Error::from(LayoutError::NoFreeCluster { scanned: 0 }))
    }

    /// Reserve up to a batch of free clusters, searching from the hint to a few clusters past
    /// the end of the file; fails only when none is found.
    fn fill_reserve(&mut self, file: &File, layout: &mut Layout) -> io::Result<()> {
        let per = self.entries_per_block();
        let start = self.free_hint;
        let mut cluster = start;
        while self.reserve.len() < RESERVE_BATCH
            && cluster < layout.end_cluster().max(start) + SCAN_SLACK
        {
            let (t, _) = self.locate(cluster)?;
            self.block(file, layout, t)?;
            if self.table[t] != 0 && self.free[t] == 0 {
                cluster = (t as u64 + 1) * per; // a full block
                continue;
            }
            if self.get(file, layout, cluster)? == 0 {
                self.set(file, layout, cluster, 1)?;
                if layout.is_metadata(cluster) {
                    tracing::warn!("qcow2: metadata cluster {cluster} had refcount 0; set to 1");
                } else {
                    layout.grow_to_cluster(cluster);
                    self.reserve.push_back(cluster << self.cluster_bits);
                }
            }
            cluster += 1;
        }
        if self.reserve.is_empty() {
            return Err(LayoutError::NoFreeCluster {
                scanned: cluster - start,
            }
            .into());
        }
        self.free_hint = cluster;
        file.sync_data()
    }

    /// Take one reference from the cluster at `offset`, at the next flush.
    pub fn release_later(&mut self, offset: u64) {
        self.pending_free.push(offset);
    }

    /// After the caller's `fdatasync`: apply the deferred decrements.
    pub fn apply_pending_frees(&mut self, file: &File, layout: &mut Layout) -> io::Result<()> {
        for offset in std::mem::take(&mut self.pending_free) {
            let cluster = offset >> self.cluster_bits;
            let rc = self.get(file, layout, cluster)?;
            if rc == 0 {
                tracing::warn!("qcow2: cluster {cluster} released with refcount 0");
                continue;
            }
            self.set(file, layout, cluster, rc - 1)?;
            if rc <= 1 {
                self.free_hint = self.free_hint.min(cluster);
            }
        }
        Ok(())
    }

    /// Add `delta` to the refcount of the cluster at `offset` now (write-through, not
    /// synced): for internal snapshots, which take and drop references to whole trees. A
    /// count that would overflow the image's refcount width or drop below zero fails.
    pub fn adjust(
        &mut self,
        file: &File,
        layout: &mut Layout,
        offset: u64,
        delta: i64,
    ) -> io::Result<u64> {
        let cluster = offset >> self.cluster_bits;
        let rc = self.get(file, layout, cluster)?;
        let max = if self.order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << self.order)) - 1
        };
        let new = rc
            .checked_add_signed(delta)
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "the refcount of cluster {cluster} would go from {rc} out of range by {delta}"
                ))
            })?;
        self.set(file, layout, cluster, new)?;
        if new == 0 {
            self.free_hint = self.free_hint.min(cluster);
        }
        Ok(new)
    }

    /// `n` consecutive free clusters past the end of the file, refcount 1 and synced (for
    /// tables longer than a cluster; the reserve is left alone). Returns the first one's
    /// offset.
    pub fn allocate_run(&mut self, file: &File, layout: &mut Layout, n: u64) -> io::Result<u64> {
        let mut start = layout.end_cluster();
        let mut taken = 0;
        while taken < n {
            let c = start + taken;
            if self.get(file, layout, c)? != 0 || layout.is_metadata(c) {
                for back in start..c {
                    self.set(file, layout, back, 0)?;
                }
                start = c + 1;
                taken = 0;
                continue;
            }
            self.set(file, layout, c, 1)?;
            // a new refcount block may have landed on a later cluster of the run
            layout.grow_to_cluster(c);
            taken += 1;
        }
        file.sync_data()?;
        Ok(start << self.cluster_bits)
    }

    /// Clean shutdown: the unused reserve is freed again.
    pub fn return_reserve(&mut self, file: &File, layout: &mut Layout) -> io::Result<()> {
        for offset in std::mem::take(&mut self.reserve) {
            let cluster = offset >> self.cluster_bits;
            self.set(file, layout, cluster, 0)?;
            self.free_hint = self.free_hint.min(cluster);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_cache_stays_within_its_cap() {
        // 64 KiB clusters, 16-bit refcounts: a table (cluster 1) of 300 blocks (clusters
        // 10..310, all zero: every cluster free), more than the cache holds
        let path = std::env::temp_dir().join(format!("sv-refcount-cache-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap(); // the open file outlives its name
        file.set_len(400 << 16).unwrap();
        let table: Vec<u8> = (0..300u64)
            .flat_map(|t| ((10 + t) << 16).to_be_bytes())
            .collect();
        file.write_all_at(&table, 1 << 16).unwrap();
        let mut layout = Layout::new(16, 400 << 16);
        let mut refs = Refcounts::load(&file, &mut layout, 16, 4, 1 << 16, 1).unwrap();
        let cap = BLOCK_CACHE_BYTES >> 16;
        for t in 0..300u64 {
            assert_eq!(refs.get(&file, &layout, t * 32768).unwrap(), 0);
            assert!(
                refs.blocks.len() <= cap,
                "{} blocks cached",
                refs.blocks.len()
            );
            assert_eq!(refs.blocks.len(), refs.cached.len());
        }
        assert_eq!(refs.free[299], 32768, "free counts outlive eviction");
    }
}
