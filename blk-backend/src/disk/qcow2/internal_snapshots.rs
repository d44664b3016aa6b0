//! Internal snapshots: made, applied and deleted the way QEMU does it, so that
//! `qemu-img snapshot -l/-c/-a/-d` and splitvisor-blk read each other's snapshots.
//!
//! A snapshot is an entry in the snapshot table with its own copy of the L1 table; the L2
//! tables and data clusters stay shared, each holding one reference per L1 table that reaches
//! it. Making one adds a reference to everything the active tree reaches; deleting one takes
//! its references away; applying one makes a copy of its L1 table the active one. The COPIED
//! flags of the active tree (refcount exactly 1: writable in place) follow every change.
//!
//! Each operation works on a quiet image: the metadata lock held, everything written so far
//! flushed, the allocation reserve given back; the metadata state is read again afterwards.
//! References are added before anything points to them and taken away only after nothing
//! does, each step synced, so a crash leaves at most leaked clusters (what `qemu-img check -r
//! leaks` repairs), never a reference to a free cluster.

use std::io;
use std::os::unix::fs::FileExt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::header::Header;
use super::layout::Area;
use super::snapshots::{self, Entry};
use super::tables::{self, read_be64s, COMPRESSED, COPIED, OFFSET_MASK};
use super::{load_meta, read_header, Meta, Qcow2Disk, Qcow2Error};

/// The most snapshots an image may have (QEMU's limit).
const MAX_SNAPSHOTS: usize = 65536;
/// Longest name accepted (the format allows 65535 bytes; the control socket is line based).
const MAX_NAME: usize = 1024;

/// What `qemu-img snapshot -l` shows of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    /// Seconds since the epoch when it was made.
    pub date_sec: u64,
    /// The guest disk size at the snapshot.
    pub disk_size: u64,
    /// Bytes of VM state QEMU keeps inside the image (splitvisor keeps its own outside: 0).
    pub vm_state_size: u64,
}

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the image has no snapshot named {0:?}")]
    NotFound(String),
    #[error("the image already has a snapshot named {0:?}")]
    Exists(String),
    #[error("invalid snapshot name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("the image is open read-only")]
    ReadOnly,
    #[error("the image already has {MAX_SNAPSHOTS} snapshots")]
    TooMany,
    #[error(transparent)]
    Image(#[from] Qcow2Error),
    #[error("cannot update the image")]
    Io(#[from] io::Error),
}

fn check_name(name: &str) -> Result<(), SnapshotError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME {
        "it is longer than 1024 bytes"
    } else if name.chars().any(char::is_control) {
        "it has control characters"
    } else {
        return Ok(());
    };
    Err(SnapshotError::BadName {
        name: name.to_string(),
        reason,
    })
}

fn info(e: &Entry, current_size: u64) -> SnapshotInfo {
    let large = e
        .extra
        .get(0..8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
    SnapshotInfo {
        id: e.id.clone(),
        name: e.name.clone(),
        date_sec: u64::from(e.date_sec),
        disk_size: e.disk_size(current_size),
        vm_state_size: large.unwrap_or(u64::from(e.vm_state_size)),
    }
}

/// The entry `key` names: by name first, then by id (as qemu-img looks them up).
fn find(entries: &[Entry], key: &str) -> Result<usize, SnapshotError> {
    entries
        .iter()
        .position(|e| e.name == key)
        .or_else(|| entries.iter().position(|e| e.id == key))
        .ok_or_else(|| SnapshotError::NotFound(key.to_string()))
}

impl Qcow2Disk {
    /// The image's snapshots, in table order.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let _quiet = self.meta()?;
        let (header, _) = read_header(&self.file)?;
        let (entries, _) = self.table(&header)?;
        Ok(entries.iter().map(|e| info(e, header.size)).collect())
    }

    /// Make a snapshot of the disk as it is now.
    pub fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo, SnapshotError> {
        check_name(name)?;
        let mut guard = self.writable_meta()?;
        let m = &mut *guard;
        let header = self.quiesce(m)?;
        let (mut entries, old_len) = self.table(&header)?;
        if entries.iter().any(|e| e.name == name) {
            return Err(SnapshotError::Exists(name.to_string()));
        }
        if entries.len() >= MAX_SNAPSHOTS {
            return Err(SnapshotError::TooMany);
        }
        // everything the active tree reaches gains the snapshot's reference; the active
        // tables no longer own it alone
        let l1 = read_be64s(&self.file, header.l1_table_offset, header.l1_size as usize)?;
        self.adjust_tree(m, &l1, 1)?;
        self.file.sync_data()?;
        self.fix_copied(m, header.l1_table_offset, header.l1_size)?;
        // the snapshot's own L1 table
        let copy: Vec<u64> = l1.iter().map(|e| e & !COPIED).collect();
        let l1_offset = self.write_new(m, Area::SnapshotL1Table, &be_bytes(&copy))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let next_id = entries
            .iter()
            .filter_map(|e| e.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let mut extra = Vec::with_capacity(24);
        extra.extend(0u64.to_be_bytes()); // vm_state_size_large
        extra.extend(header.size.to_be_bytes()); // disk_size
        extra.extend(u64::MAX.to_be_bytes()); // icount: none
        let entry = Entry {
            l1_offset,
            l1_size: header.l1_size,
            id: next_id.to_string(),
            name: name.to_string(),
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            extra,
        };
        let made = info(&entry, header.size);
        entries.push(entry);
        self.replace_table(m, &header, &entries, old_len)?;
        self.reload(m)?;
        tracing::info!("qcow2: snapshot {name:?} made (id {})", made.id);
        Ok(made)
    }

    /// Delete the snapshot named (or with the id) `key`.
    pub fn delete_snapshot(&self, key: &str) -> Result<(), SnapshotError> {
        let mut guard = self.writable_meta()?;
        let m = &mut *guard;
        let header = self.quiesce(m)?;
        let (mut entries, old_len) = self.table(&header)?;
        let gone = entries.remove(find(&entries, key)?);
        // the table without it first; then its references go
        self.replace_table(m, &header, &entries, old_len)?;
        let l1 = read_be64s(&self.file, gone.l1_offset, gone.l1_size as usize)?;
        self.adjust_tree(m, &l1, -1)?;
        self.free_run(m, gone.l1_offset, u64::from(gone.l1_size) * 8)?;
        self.file.sync_data()?;
        self.fix_copied(m, header.l1_table_offset, header.l1_size)?;
        self.file.sync_data()?;
        self.reload(m)?;
        tracing::info!("qcow2: snapshot {:?} (id {}) deleted", gone.name, gone.id);
        Ok(())
    }

    /// Make the disk what it was at the snapshot named (or with the id) `key`: its content
    /// and its size. Not for a disk a guest is using.
    pub fn apply_snapshot(&mut self, key: &str) -> Result<SnapshotInfo, SnapshotError> {
        let mut guard = self.writable_meta()?;
        let m = &mut *guard;
        let header = self.quiesce(m)?;
        let (entries, _) = self.table(&header)?;
        let snap = &entries[find(&entries, key)?];
        let snap_l1 = read_be64s(&self.file, snap.l1_offset, snap.l1_size as usize)?;
        // the snapshot's tree gains the reference of the new active L1 table
        self.adjust_tree(m, &snap_l1, 1)?;
        self.file.sync_data()?;
        let size = header.l1_size.max(snap.l1_size);
        let mut new_l1 = snap_l1.clone();
        new_l1.resize(size as usize, 0);
        let l1_offset = self.write_new(m, Area::L1Table, &be_bytes(&new_l1))?;
        // size, l1_size and l1_table_offset (bytes 24..48, crypt_method kept) in one write
        let disk_size = snap.disk_size(header.size);
        let mut fields = [0u8; 24];
        self.file.read_exact_at(&mut fields, 24)?;
        fields[0..8].copy_from_slice(&disk_size.to_be_bytes());
        fields[12..16].copy_from_slice(&size.to_be_bytes());
        fields[16..24].copy_from_slice(&l1_offset.to_be_bytes());
        m.layout
            .check_write(Area::Header, 24, 24, Some(Area::Header))
            .map_err(io::Error::from)?;
        self.file.write_all_at(&fields, 24)?;
        self.file.sync_data()?;
        // the old active tree loses its reference
        let old_l1 = read_be64s(&self.file, header.l1_table_offset, header.l1_size as usize)?;
        self.adjust_tree(m, &old_l1, -1)?;
        self.free_run(m, header.l1_table_offset, u64::from(header.l1_size) * 8)?;
        self.file.sync_data()?;
        self.fix_copied(m, l1_offset, size)?;
        self.file.sync_data()?;
        let applied = info(snap, header.size);
        self.reload(m)?;
        drop(guard);
        self.size
            .store(disk_size & !511, std::sync::atomic::Ordering::Release);
        tracing::info!("qcow2: snapshot {:?} applied", applied.name);
        Ok(applied)
    }

    pub(super) fn writable_meta(&self) -> Result<std::sync::MutexGuard<'_, Meta>, SnapshotError> {
        if self.readonly {
            return Err(SnapshotError::ReadOnly);
        }
        Ok(self.meta()?)
    }

    /// Read the metadata state again from the changed image.
    pub(super) fn reload(&self, m: &mut Meta) -> Result<(), SnapshotError> {
        m.refs.return_reserve(&self.file, &mut m.layout)?;
        self.file.sync_data()?;
        *m = load_meta(&self.file, &read_header(&self.file)?.0)?;
        Ok(())
    }

    pub(super) fn table(&self, header: &Header) -> Result<(Vec<Entry>, u64), SnapshotError> {
        let file_len = self.file.metadata()?.len();
        Ok(snapshots::read_table(&self.file, header, file_len)?)
    }

    /// Flush, free what waited for it, give the reserve back; the header as it is now.
    pub(super) fn quiesce(&self, m: &mut Meta) -> Result<Header, SnapshotError> {
        self.file.sync_data()?;
        m.refs.apply_pending_frees(&self.file, &mut m.layout)?;
        m.refs.return_reserve(&self.file, &mut m.layout)?;
        self.file.sync_data()?;
        Ok(read_header(&self.file)?.0)
    }

    /// Add `delta` references to every L2 table `l1` points to and every cluster those
    /// tables map (one per L1 entry reaching it, as QEMU counts). The whole tree is checked
    /// first (every table and cluster inside the file, none on the image's metadata), so a
    /// malformed one changes no count.
    fn adjust_tree(&self, m: &mut Meta, l1: &[u64], delta: i64) -> io::Result<()> {
        self.walk_tree(l1, &mut |area, offset| {
            m.layout.check_cluster(area, offset)?;
            Ok(())
        })?;
        self.walk_tree(l1, &mut |_, offset| {
            m.refs.adjust(&self.file, &mut m.layout, offset, delta)?;
            Ok(())
        })
    }

    /// Call `visit` with each data cluster and L2 table (its offset) the tree of `l1`
    /// reaches, the table after its clusters.
    fn walk_tree(
        &self,
        l1: &[u64],
        visit: &mut dyn FnMut(Area, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let entries = 1usize << (self.cluster_bits - 3);
        let cs = self.cluster_size();
        for l2_offset in l1.iter().map(|e| e & OFFSET_MASK).filter(|o| *o != 0) {
            if !l2_offset.is_multiple_of(cs) {
                return Err(io::Error::other(format!(
                    "an L1 entry points to {l2_offset:#x}, not cluster aligned"
                )));
            }
            let l2 = read_be64s(&self.file, l2_offset, entries)?;
            for entry in l2 {
                let mapping = tables::decode(entry, self.cluster_bits);
                for c in tables::referenced_clusters(mapping, self.cluster_bits) {
                    visit(Area::DataCluster, c)?;
                }
            }
            visit(Area::L2Table, l2_offset)?;
        }
        Ok(())
    }

    /// Set each COPIED flag of the active tree (L1 at `l1_offset`) exactly where the refcount
    /// is 1.
    fn fix_copied(&self, m: &mut Meta, l1_offset: u64, l1_size: u32) -> io::Result<()> {
        let entries = 1usize << (self.cluster_bits - 3);
        let l1 = read_be64s(&self.file, l1_offset, l1_size as usize)?;
        for (i, &l1e) in l1.iter().enumerate() {
            let l2_offset = l1e & OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            m.layout.check_cluster(Area::L2Table, l2_offset)?;
            let rc = m
                .refs
                .get(&self.file, &m.layout, l2_offset >> self.cluster_bits)?;
            let want = if rc == 1 {
                l2_offset | COPIED
            } else {
                l2_offset
            };
            if want != l1e {
                self.file
                    .write_all_at(&want.to_be_bytes(), l1_offset + i as u64 * 8)?;
            }
            let mut l2 = read_be64s(&self.file, l2_offset, entries)?;
            let mut changed = false;
            for entry in l2.iter_mut().filter(|e| **e & COMPRESSED == 0) {
                let offset = *entry & OFFSET_MASK;
                if offset == 0 {
                    continue;
                }
                let rc = m
                    .refs
                    .get(&self.file, &m.layout, offset >> self.cluster_bits)?;
                let want = if rc == 1 {
                    *entry | COPIED
                } else {
                    *entry & !COPIED
                };
                changed |= want != *entry;
                *entry = want;
            }
            if changed {
                self.file.write_all_at(&be_bytes(&l2), l2_offset)?;
            }
        }
        Ok(())
    }

    /// Write `bytes` into newly allocated clusters (refcount 1, synced); their offset.
    pub(super) fn write_new(&self, m: &mut Meta, area: Area, bytes: &[u8]) -> io::Result<u64> {
        let cs = self.cluster_size();
        let n = (bytes.len() as u64).div_ceil(cs).max(1);
        let offset = m.refs.allocate_run(&self.file, &mut m.layout, n)?;
        m.layout.check_write(area, offset, n * cs, None)?;
        let mut whole = bytes.to_vec();
        whole.resize((n * cs) as usize, 0);
        self.file.write_all_at(&whole, offset)?;
        Ok(offset)
    }

    /// Drop one reference from each cluster of `len` bytes at `offset`.
    pub(super) fn free_run(&self, m: &mut Meta, offset: u64, len: u64) -> io::Result<()> {
        let cs = self.cluster_size();
        for i in 0..len.div_ceil(cs) {
            m.refs
                .adjust(&self.file, &mut m.layout, offset + i * cs, -1)?;
        }
        Ok(())
    }

    /// Write `entries` as the new snapshot table, point the header at it, then free the old
    /// table (`old_len` bytes).
    fn replace_table(
        &self,
        m: &mut Meta,
        header: &Header,
        entries: &[Entry],
        old_len: u64,
    ) -> io::Result<()> {
        let table = snapshots::encode_table(entries);
        let offset = if entries.is_empty() {
            0
        } else {
            self.write_new(m, Area::SnapshotTable, &table)?
        };
        self.file.sync_data()?;
        // nb_snapshots and snapshots_offset are neighbours: one write switches tables
        let mut fields = [0u8; 12];
        fields[0..4].copy_from_slice(&(entries.len() as u32).to_be_bytes());
        fields[4..12].copy_from_slice(&offset.to_be_bytes());
        m.layout
            .check_write(Area::Header, 60, 12, Some(Area::Header))?;
        self.file.write_all_at(&fields, 60)?;
        self.file.sync_data()?;
        if header.nb_snapshots > 0 {
            self.free_run(m, header.snapshots_offset, old_len)?;
        }
        self.file.sync_data()
    }
}

fn be_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

#[cfg(test)]
#[path = "internal_snapshots_tests.rs"]
mod tests;
