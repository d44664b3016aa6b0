//! L1 and L2 tables: where a guest cluster lives, and changing that (write-through, in the
//! crash-safe order: new tables are on disk before anything points to them).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::layout::{Area, Layout, LayoutError};
use super::refcount::Refcounts;

/// Entry flags.
pub const COPIED: u64 = 1 << 63;
pub const COMPRESSED: u64 = 1 << 62;
pub const ZERO: u64 = 1;
/// Bits 9..=55: a cluster offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Memory for cached L2 tables (write-through, so dropping them is free), and the fewest
/// tables cached whatever the cluster size.
const L2_CACHE_BYTES: usize = 16 << 20;
const L2_CACHE_MIN_TABLES: usize = 8;

/// Where a guest cluster's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated: the backing file's bytes, or zeroes.
    Unallocated,
    /// Reads as zeroes (v3 zero flag); `Some` when a cluster stays allocated under it.
    Zero(Option<u64>),
    /// Plain data at a host offset; `copied` means refcount 1 (writable in place).
    Data { offset: u64, copied: bool },
    /// Compressed: `len` bytes of deflate data from `offset`.
    Compressed { offset: u64, len: u64 },
}

pub struct Tables {
    cluster_bits: u32,
    l1_offset: u64,
    l1: Vec<u64>,
    l2_cache: HashMap<u64, Vec<u64>>,
}

pub fn read_be64s(file: &File, offset: u64, count: usize) -> io::Result<Vec<u64>> {
    let mut raw = vec![0u8; count * 8];
    file.read_exact_at(&mut raw, offset)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

impl Tables {
    /// Read the L1 table; the L2 tables it points to are recorded in `layout`.
    pub fn load(
        file: &File,
        layout: &mut Layout,
        cluster_bits: u32,
        l1_offset: u64,
        l1_size: u32,
    ) -> io::Result<Self> {
        let l1 = read_be64s(file, l1_offset, l1_size as usize)?;
        for entry in &l1 {
            if entry & OFFSET_MASK != 0 {
                layout.add(Area::L2Table, entry & OFFSET_MASK);
            }
        }
        Ok(Tables {
            cluster_bits,
            l1_offset,
            l1,
            l2_cache: HashMap::new(),
        })
    }

    fn l2_entries(&self) -> u64 {
        1 << (self.cluster_bits - 3)
    }

    fn split(&self, guest_cluster: u64) -> io::Result<(usize, usize)> {
        let l1 = (guest_cluster / self.l2_entries()) as usize;
        if l1 >= self.l1.len() {
            return Err(io::Error::other("guest cluster beyond the L1 table"));
        }
        Ok((l1, (guest_cluster % self.l2_entries()) as usize))
    }

    /// The L2 table offset of L1 entry `l1i` (0: none), checked.
    fn l2_offset(&self, layout: &Layout, l1i: usize) -> Result<u64, LayoutError> {
        match self.l1[l1i] & OFFSET_MASK {
            0 => Ok(0),
            off => layout.check_cluster(Area::L2Table, off),
        }
    }

    fn l2_table(&mut self, file: &File, offset: u64) -> io::Result<&mut Vec<u64>> {
        if !self.l2_cache.contains_key(&offset) {
            let cap = (L2_CACHE_BYTES >> self.cluster_bits).max(L2_CACHE_MIN_TABLES);
            if self.l2_cache.len() >= cap {
                self.l2_cache.clear();
            }
            let table = read_be64s(file, offset, self.l2_entries() as usize)?;
            self.l2_cache.insert(offset, table);
        }
        Ok(self.l2_cache.get_mut(&offset).expect("just inserted"))
    }

    /// Where guest cluster `guest_cluster` lives. Every offset on the way is checked against
    /// `layout`: a misaligned one, one past the end of the file or on metadata fails.
    pub fn lookup(
        &mut self,
        file: &File,
        layout: &Layout,
        guest_cluster: u64,
    ) -> io::Result<Mapping> {
        let (l1i, l2i) = self.split(guest_cluster)?;
        let l2_off = self.l2_offset(layout, l1i)?;
        if l2_off == 0 {
            return Ok(Mapping::Unallocated);
        }
        let cluster_bits = self.cluster_bits;
        let entry = self.l2_table(file, l2_off)?[l2i];
        let m = decode(entry, cluster_bits);
        match m {
            Mapping::Data { offset, .. } | Mapping::Zero(Some(offset)) => {
                layout.check_cluster(Area::DataCluster, offset)?;
            }
            Mapping::Compressed { offset, len } => layout.check_compressed(offset, len)?,
            Mapping::Unallocated | Mapping::Zero(None) => {}
        }
        Ok(m)
    }

    /// Point guest cluster `guest_cluster` at `entry` (an encoded L2 entry). Creates or
    /// un-shares its L2 table first when needed. Returns the previous entry.
    pub fn set(
        &mut self,
        file: &File,
        refs: &mut Refcounts,
        layout: &mut Layout,
        guest_cluster: u64,
        entry: u64,
    ) -> io::Result<u64> {
        let (l1i, l2i) = self.split(guest_cluster)?;
        let l2_off = self.writable_l2(file, refs, layout, l1i)?;
        let at = l2_off + l2i as u64 * 8;
        layout.check_write(Area::L2Table, at, 8, Some(Area::L2Table))?;
        let table = self.l2_table(file, l2_off)?;
        let old = table[l2i];
        table[l2i] = entry;
        file.write_all_at(&entry.to_be_bytes(), at)?;
        Ok(old)
    }

    /// Whether guest cluster's L2 table exists (setting an entry to "unallocated" in a
    /// missing table is a no-op).
    pub fn has_l2(&self, guest_cluster: u64) -> bool {
        self.split(guest_cluster)
            .map(|(l1i, _)| self.l1[l1i] & OFFSET_MASK != 0)
            .unwrap_or(false)
    }

    /// The L2 table for L1 index `l1i`, allocated (zeroed) or copied (shared with a snapshot)
    /// so that this image alone owns it.
    fn writable_l2(
        &mut self,
        file: &File,
        refs: &mut Refcounts,
        layout: &mut Layout,
        l1i: usize,
    ) -> io::Result<u64> {
        let old_off = self.l2_offset(layout, l1i)?;
        if old_off != 0 && self.l1[l1i] & COPIED != 0 {
            return Ok(old_off);
        }
        let l1_entry_at = self.l1_offset + l1i as u64 * 8;
        layout.check_write(Area::L1Table, l1_entry_at, 8, Some(Area::L1Table))?;
        let new_off = refs.allocate(file, layout)?;
        let cs = 1u64 << self.cluster_bits;
        layout.check_write(Area::L2Table, new_off, cs, None)?;
        let table = if old_off == 0 {
            vec![0u64; self.l2_entries() as usize]
        } else {
            self.l2_table(file, old_off)?.clone()
        };
        let raw: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        file.write_all_at(&raw, new_off)?;
        layout.add(Area::L2Table, new_off);
        self.l2_cache.insert(new_off, table);
        let entry = new_off | COPIED;
        self.l1[l1i] = entry;
        file.write_all_at(&entry.to_be_bytes(), l1_entry_at)?;
        if old_off != 0 {
            // still a snapshot's table, which keeps its own reference
            layout.remove(Area::L2Table, old_off);
            refs.release_later(old_off);
        }
        Ok(new_off)
    }
}

/// Decode an L2 entry.
pub fn decode(entry: u64, cluster_bits: u32) -> Mapping {
    if entry & COMPRESSED != 0 {
        // bits 0..x: host offset; x..62: additional 512-byte sectors
        let x = 62 - (cluster_bits - 8);
        let offset = entry & ((1 << x) - 1);
        let sectors = ((entry >> x) & ((1 << (cluster_bits - 8)) - 1)) + 1;
        let len = sectors * 512 - (offset & 511);
        return Mapping::Compressed { offset, len };
    }
    let offset = entry & OFFSET_MASK;
    if entry & ZERO != 0 {
        return Mapping::Zero((offset != 0).then_some(offset));
    }
    if offset == 0 {
        return Mapping::Unallocated;
    }
    Mapping::Data {
        offset,
        copied: entry & COPIED != 0,
    }
}

/// The host clusters (offsets) a mapping holds a reference to.
pub fn referenced_clusters(m: Mapping, cluster_bits: u32) -> Vec<u64> {
    let mask = !((1u64 << cluster_bits) - 1);
    match m {
        Mapping::Data { offset, .. } | Mapping::Zero(Some(offset)) => vec![offset],
        Mapping::Compressed { offset, len } => {
            let first = offset & mask;
            let last = (offset + len.max(1) - 1) & mask;
            (0..=((last - first) >> cluster_bits))
                .map(|i| first + (i << cluster_bits))
                .collect()
        }
        _ => Vec::new(),
    }
}
