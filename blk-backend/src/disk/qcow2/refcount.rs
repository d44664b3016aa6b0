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

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Clusters reserved per `fdatasync`.
const RESERVE_BATCH: usize = 32;

pub struct Refcounts {
    cluster_bits: u32,
    /// log2 of the refcount width in bits (3..=6).
    order: u32,
    table_offset: u64,
    table: Vec<u64>,
    /// Refcount blocks read so far, raw (big-endian entries), by their offset.
    blocks: HashMap<u64, Vec<u8>>,
    /// First cluster index that may be free.
    free_hint: u64,
    /// Clusters with refcount 1 on stable storage, not referenced yet.
    reserve: VecDeque<u64>,
    /// Clusters (by offset) whose refcount drops by one at the next flush.
    pending_free: Vec<u64>,
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Refcounts {
    pub fn load(
        file: &File,
        cluster_bits: u32,
        order: u32,
        table_offset: u64,
        table_clusters: u32,
    ) -> io::Result<Refcounts> {
        let bytes = (u64::from(table_clusters) << cluster_bits) as usize;
        if bytes > 64 << 20 {
            return Err(other(format!(
                "refcount table of {bytes} bytes is too large"
            )));
        }
        let mut raw = vec![0u8; bytes];
        file.read_exact_at(&mut raw, table_offset)?;
        let table = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])) & !((1 << 9) - 1))
            .collect();
        Ok(Refcounts {
            cluster_bits,
            order,
            table_offset,
            table,
            blocks: HashMap::new(),
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

    fn locate(&self, cluster: u64) -> io::Result<(usize, usize)> {
        let per = self.entries_per_block();
        let t = (cluster / per) as usize;
        if t >= self.table.len() {
            return Err(other(format!(
                "cluster {cluster} is beyond what the refcount table covers (image too large)"
            )));
        }
        Ok((t, (cluster % per) as usize))
    }

    fn block<'a>(&'a mut self, file: &File, offset: u64) -> io::Result<&'a mut Vec<u8>> {
        if !self.blocks.contains_key(&offset) {
            let mut raw = vec![0u8; 1 << self.cluster_bits];
            file.read_exact_at(&mut raw, offset)?;
            self.blocks.insert(offset, raw);
        }
        Ok(self.blocks.get_mut(&offset).expect("just inserted"))
    }

    /// The refcount of host cluster index `cluster`.
    pub fn get(&mut self, file: &File, cluster: u64) -> io::Result<u64> {
        let (t, i) = self.locate(cluster)?;
        let block_off = self.table[t];
        if block_off == 0 {
            return Ok(0);
        }
        let n = self.entry_bytes();
        let block = self.block(file, block_off)?;
        Ok(block[i * n..(i + 1) * n]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// Set the refcount of `cluster` (write-through).
    fn set(&mut self, file: &File, cluster: u64, value: u64) -> io::Result<()> {
        let (t, i) = self.locate(cluster)?;
        if self.table[t] == 0 {
            self.new_block(file, t, cluster)?;
        }
        let block_off = self.table[t];
        let n = self.entry_bytes();
        let bytes = &value.to_be_bytes()[8 - n..];
        let block = self.block(file, block_off)?;
        block[i * n..(i + 1) * n].copy_from_slice(bytes);
        file.write_all_at(bytes, block_off + (i * n) as u64)
    }

    /// Create refcount block `t`, placed inside the range it covers (so it counts itself), at a
    /// cluster other than `avoid`; the block is on disk before the table points to it.
    fn new_block(&mut self, file: &File, t: usize, avoid: u64) -> io::Result<()> {
        let per = self.entries_per_block();
        let first = t as u64 * per;
        // no block means every cluster of the range is free
        let at = if first == avoid { first + 1 } else { first };
        let offset = at << self.cluster_bits;
        let mut raw = vec![0u8; 1 << self.cluster_bits];
        let n = self.entry_bytes();
        let i = (at - first) as usize;
        raw[(i + 1) * n - 1] = 1;
        file.write_all_at(&raw, offset)?;
        file.sync_data()?;
        self.blocks.insert(offset, raw);
        self.table[t] = offset;
        file.write_all_at(&offset.to_be_bytes(), self.table_offset + t as u64 * 8)?;
        file.sync_data()
    }

    /// One free host cluster (offset) whose refcount 1 is on stable storage.
    pub fn allocate(&mut self, file: &File) -> io::Result<u64> {
        if self.reserve.is_empty() {
            self.fill_reserve(file)?;
        }
        self.reserve
            .pop_front()
            .ok_or_else(|| other("no free cluster".into()))
    }

    fn fill_reserve(&mut self, file: &File) -> io::Result<()> {
        let mut cluster = self.free_hint;
        while self.reserve.len() < RESERVE_BATCH {
            if self.get(file, cluster)? == 0 {
                self.set(file, cluster, 1)?;
                self.reserve.push_back(cluster << self.cluster_bits);
            }
            cluster += 1;
        }
        self.free_hint = cluster;
        file.sync_data()
    }

    /// Take one reference from the cluster at `offset`, at the next flush.
    pub fn release_later(&mut self, offset: u64) {
        self.pending_free.push(offset);
    }

    /// After the caller's `fdatasync`: apply the deferred decrements.
    pub fn apply_pending_frees(&mut self, file: &File) -> io::Result<()> {
        for offset in std::mem::take(&mut self.pending_free) {
            let cluster = offset >> self.cluster_bits;
            let rc = self.get(file, cluster)?;
            self.set(file, cluster, rc.saturating_sub(1))?;
            if rc <= 1 {
                self.free_hint = self.free_hint.min(cluster);
            }
        }
        Ok(())
    }

    /// Clean shutdown: the unused reserve is freed again.
    pub fn return_reserve(&mut self, file: &File) -> io::Result<()> {
        for offset in std::mem::take(&mut self.reserve) {
            let cluster = offset >> self.cluster_bits;
            self.set(file, cluster, 0)?;
            self.free_hint = self.free_hint.min(cluster);
        }
        Ok(())
    }
}
