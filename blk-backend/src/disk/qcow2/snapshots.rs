//! The internal-snapshot table, read at open only to learn where it and the snapshots' L1
//! tables lie (so that no write lands on them) and to refuse one that is malformed. The
//! snapshots' clusters themselves are kept by their refcounts: shared clusters are copied on
//! write.

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

/// The regions (area, offset, length in bytes) the snapshot table and its L1 tables take.
pub fn regions(
    file: &File,
    header: &Header,
    file_len: u64,
) -> Result<Vec<(Area, u64, u64)>, Qcow2Error> {
    let mut out = Vec::new();
    if header.nb_snapshots == 0 {
        return Ok(out);
    }
    let cs = header.cluster_size();
    let start = header.snapshots_offset;
    let mut at = start;
    for index in 0..header.nb_snapshots {
        at = at.div_ceil(8) * 8; // each entry starts 8-byte aligned; the last is not padded
        let bad = |reason: String| Qcow2Error::BadSnapshot { index, reason };
        if at - start + ENTRY_HEADER > MAX_TABLE_BYTES {
            return Err(Qcow2Error::BadField {
                field: Field::SnapshotsOffset,
                value: start,
                reason: "the snapshot table is larger than 64 MiB".into(),
            });
        }
        if at + ENTRY_HEADER > file_len {
            return Err(Qcow2Error::BadField {
                field: Field::SnapshotsOffset,
                value: start,
                reason: "the snapshot table runs past the end of the file".into(),
            });
        }
        let mut e = [0u8; ENTRY_HEADER as usize];
        file.read_exact_at(&mut e, at)?;
        let be32 = |i: usize| u32::from_be_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        let be16 = |i: usize| u64::from(u16::from_be_bytes([e[i], e[i + 1]]));
        let l1_offset = (u64::from(be32(0)) << 32) | u64::from(be32(4));
        let l1_size = u64::from(be32(8));
        let extra = be32(36);
        if extra > MAX_EXTRA_DATA {
            return Err(bad(format!("{extra} bytes of extra data (at most 1024)")));
        }
        if l1_size > MAX_L1_ENTRIES {
            return Err(bad(format!("an L1 table of {l1_size} entries")));
        }
        if l1_size > 0 {
            if l1_offset == 0 || !l1_offset.is_multiple_of(cs) {
                return Err(bad(format!(
                    "its L1 table offset {l1_offset:#x} is zero or not cluster aligned"
                )));
            }
            if l1_offset.saturating_add(l1_size * 8) > file_len {
                return Err(bad(format!(
                    "its L1 table at {l1_offset:#x} runs past the end of the file"
                )));
            }
            out.push((Area::SnapshotL1Table, l1_offset, l1_size * 8));
        }
        at += ENTRY_HEADER + u64::from(extra) + be16(12) + be16(14);
    }
    if at - start > MAX_TABLE_BYTES || at > file_len {
        return Err(Qcow2Error::BadField {
            field: Field::SnapshotsOffset,
            value: start,
            reason: "the snapshot table runs past the end of the file or 64 MiB".into(),
        });
    }
    out.push((Area::SnapshotTable, start, at - start));
    Ok(out)
}
