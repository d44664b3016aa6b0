//! The internal-snapshot table: its entries, read (at open, to learn where the table and the
//! snapshots' L1 tables lie so that no write lands on them, and to refuse one that is
//! malformed) and encoded (by `internal_snapshots.rs`). The snapshots' clusters themselves
//! are kept by their refcounts: shared clusters are copied on write.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{Field, Header, MAX_L1_ENTRIES};
use super::layout::Area;
use super::Qcow2Error;

/// The fixed part of a snapshot table entry.
const ENTRY_HEADER: u64 = 40;
/// QEMU's limits: extra data per snapshot, and the whole table.
const MAX_EXTRA_DATA: u32 = 1024;
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// One entry of the snapshot table, as stored (unknown extra data kept as it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub l1_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u32,
    /// vm_state_size_large, disk_size, icount … (at least 16 bytes in version 3 images).
    pub extra: Vec<u8>,
}

impl Entry {
    /// The guest disk size at the snapshot (`disk_size` in the extra data, else `current`).
    pub fn disk_size(&self, current: u64) -> u64 {
        match self.extra.get(8..16) {
            Some(b) => u64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
            None => current,
        }
    }

    /// Append the entry to `out` (8-byte aligned before it, as the format wants).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.resize(out.len().div_ceil(8) * 8, 0);
        out.extend(self.l1_offset.to_be_bytes());
        out.extend(self.l1_size.to_be_bytes());
        out.extend((self.id.len() as u16).to_be_bytes());
        out.extend((self.name.len() as u16).to_be_bytes());
        out.extend(self.date_sec.to_be_bytes());
        out.extend(self.date_nsec.to_be_bytes());
        out.extend(self.vm_clock_nsec.to_be_bytes());
        out.extend(self.vm_state_size.to_be_bytes());
        out.extend((self.extra.len() as u32).to_be_bytes());
        out.extend(&self.extra);
        out.extend(self.id.as_bytes());
        out.extend(self.name.as_bytes());
    }
}

/// The whole table, encoded (each entry 8-byte aligned; the last is not padded).
pub fn encode_table(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        e.encode(&mut out);
    }
    out
}

/// Read and check the snapshot table (`nb_snapshots` entries at `snapshots_offset`); also
/// returns the table's length in bytes.
pub fn read_table(
    file: &File,
    header: &Header,
    file_len: u64,
) -> Result<(Vec<Entry>, u64), Qcow2Error> {
    let mut out = Vec::new();
    let cs = header.cluster_size();
    let start = header.snapshots_offset;
    let mut at = start;
    let past_end = |reason: &str| Qcow2Error::BadField {
        field: Field::SnapshotsOffset,
        value: start,
        reason: reason.into(),
    };
    for index in 0..header.nb_snapshots {
        at = at.div_ceil(8) * 8; // each entry starts 8-byte aligned; the last is not padded
        let bad = |reason: String| Qcow2Error::BadSnapshot { index, reason };
        if at - start + ENTRY_HEADER > MAX_TABLE_BYTES {
            return Err(past_end("the snapshot table is larger than 64 MiB"));
        }
        if at + ENTRY_HEADER > file_len {
            return Err(past_end("the snapshot table runs past the end of the file"));
        }
        let mut e = [0u8; ENTRY_HEADER as usize];
        file.read_exact_at(&mut e, at)?;
        let be32 = |i: usize| u32::from_be_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        let be16 = |i: usize| u64::from(u16::from_be_bytes([e[i], e[i + 1]]));
        let be64 = |i: usize| (u64::from(be32(i)) << 32) | u64::from(be32(i + 4));
        let l1_offset = be64(0);
        let l1_size = be32(8);
        let extra_len = be32(36);
        if extra_len > MAX_EXTRA_DATA {
            return Err(bad(format!(
                "{extra_len} bytes of extra data (at most 1024)"
            )));
        }
        if u64::from(l1_size) > MAX_L1_ENTRIES {
            return Err(bad(format!("an L1 table of {l1_size} entries")));
        }
        if l1_size > 0 {
            if l1_offset == 0 || !l1_offset.is_multiple_of(cs) {
                return Err(bad(format!(
                    "its L1 table offset {l1_offset:#x} is zero or not cluster aligned"
                )));
            }
            if l1_offset.saturating_add(u64::from(l1_size) * 8) > file_len {
                return Err(bad(format!(
                    "its L1 table at {l1_offset:#x} runs past the end of the file"
                )));
            }
        }
        let (id_len, name_len) = (be16(12), be16(14));
        let var_len = u64::from(extra_len) + id_len + name_len;
        if at + ENTRY_HEADER + var_len > file_len {
            return Err(past_end("the snapshot table runs past the end of the file"));
        }
        let mut var = vec![0u8; var_len as usize];
        file.read_exact_at(&mut var, at + ENTRY_HEADER)?;
        let extra = var[..extra_len as usize].to_vec();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let id = text(&var[extra_len as usize..(u64::from(extra_len) + id_len) as usize]);
        let name = text(&var[(u64::from(extra_len) + id_len) as usize..]);
        out.push(Entry {
            l1_offset,
            l1_size,
            id,
            name,
            date_sec: be32(16),
            date_nsec: be32(20),
            vm_clock_nsec: be64(24),
            vm_state_size: be32(32),
            extra,
        });
        at += ENTRY_HEADER + var_len;
    }
    if at - start > MAX_TABLE_BYTES {
        return Err(past_end(
            "the snapshot table runs past the end of the file or 64 MiB",
        ));
    }
    Ok((out, at - start))
}

/// The regions (area, offset, length in bytes) the snapshot table and its L1 tables take.
pub fn regions(
    file: &File,
    header: &Header,
    file_len: u64,
) -> Result<Vec<(Area, u64, u64)>, Qcow2Error> {
    if header.nb_snapshots == 0 {
        return Ok(Vec::new());
    }
    let (entries, len) = read_table(file, header, file_len)?;
    let mut out: Vec<_> = entries
        .iter()
        .filter(|e| e.l1_size > 0)
        .map(|e| (Area::SnapshotL1Table, e.l1_offset, u64::from(e.l1_size) * 8))
        .collect();
    out.push((Area::SnapshotTable, header.snapshots_offset, len));
    Ok(out)
}
