//! The qcow2 header (version 2 and 3) and its extensions: parsed, then checked against what we
//! support, so that an image we cannot serve safely is refused at open with the reason.

use super::Qcow2Error;

pub const MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"
const V2_HEADER_LEN: u32 = 72;

/// Incompatible feature bits (version 3).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The fields of the header we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub refcount_order: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// The largest L1 table accepted (QEMU's limit): 32 MiB, 4 Mi entries.
pub const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;
/// The largest refcount table accepted (QEMU's limit).
const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// The most internal snapshots accepted (QEMU's limit).
const MAX_SNAPSHOTS: u32 = 65536;
const V3_HEADER_LEN: u32 = 104;

/// A header field, named as in the qcow2 specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    HeaderLength,
    ClusterBits,
    Size,
    L1Size,
    L1TableOffset,
    RefcountTableOffset,
    RefcountTableClusters,
    RefcountOrder,
    BackingFileOffset,
    BackingFileSize,
    NbSnapshots,
    SnapshotsOffset,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::HeaderLength => "header_length",
            Field::ClusterBits => "cluster_bits",
            Field::Size => "size",
            Field::L1Size => "l1_size",
            Field::L1TableOffset => "l1_table_offset",
            Field::RefcountTableOffset => "refcount_table_offset",
            Field::RefcountTableClusters => "refcount_table_clusters",
            Field::RefcountOrder => "refcount_order",
            Field::BackingFileOffset => "backing_file_offset",
            Field::BackingFileSize => "backing_file_size",
            Field::NbSnapshots => "nb_snapshots",
            Field::SnapshotsOffset => "snapshots_offset",
        })
    }
}

fn bad(field: Field, value: u64, reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::BadField {
        field,
        value,
        reason: reason.into(),
    }
}

impl Header {
    /// Parse and validate the header from the image's first cluster (at least 4 KiB of it).
    pub fn parse(buf: &[u8]) -> Result<Header, Qcow2Error> {
        if buf.len() < V2_HEADER_LEN as usize || be32(buf, 0) != MAGIC {
            return Err(Qcow2Error::BadHeader("no qcow2 magic".into()));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            let v = u64::from(cluster_bits);
            return Err(bad(Field::ClusterBits, v, "outside 9..=21"));
        }
        if be32(buf, 32) != 0 {
            return Err(Qcow2Error::Unsupported("encrypted images".into()));
        }
        let (header_len, refcount_order) = if version == 3 {
            check_incompatible(be64(buf, 72))?;
            (be32(buf, 100), be32(buf, 96))
        } else {
            (V2_HEADER_LEN, 4)
        };
        if refcount_order > 6 {
            let v = u64::from(refcount_order);
            return Err(bad(Field::RefcountOrder, v, "above 6 (64-bit refcounts)"));
        }
        if refcount_order < 3 {
            return Err(Qcow2Error::Unsupported(format!(
                "{}-bit refcounts (8 to 64 are supported)",
                1u64 << refcount_order
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let hl = u64::from(header_len);
        if version == 3 && header_len < V3_HEADER_LEN {
            return Err(bad(
                Field::HeaderLength,
                hl,
                "below the 104 bytes of a v3 header",
            ));
        }
        if !header_len.is_multiple_of(8) {
            return Err(bad(Field::HeaderLength, hl, "not a multiple of 8"));
        }
        if hl > cluster_size || header_len as usize > buf.len() {
            return Err(bad(
                Field::HeaderLength,
                hl,
                "longer than the first cluster",
            ));
        }
        let mut header = Header {
            version,
            backing_file: None,
            backing_format: None,
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            refcount_order,
        };
        header.check_tables()?;
        header.parse_backing(buf)?;
        header.parse_extensions(buf, header_len)?;
        Ok(header)
    }

    /// The table fields, on their own: sizes bounded, offsets cluster aligned.
    fn check_tables(&self) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        // one L1 entry maps an L2 table of cs / 8 entries
        let l1_needed = self.size.div_ceil(cs * (cs / 8));
        if l1_needed > MAX_L1_ENTRIES {
            let why = "needs an L1 table larger than 32 MiB";
            return Err(bad(Field::Size, self.size, why));
        }
        let l1_size = u64::from(self.l1_size);
        if l1_size < l1_needed {
            let why = format!("smaller than the {l1_needed} entries the virtual size needs");
            return Err(bad(Field::L1Size, l1_size, why));
        }
        if l1_size > MAX_L1_ENTRIES {
            let why = "more than the 32 MiB an L1 table may take";
            return Err(bad(Field::L1Size, l1_size, why));
        }
        let aligned = |off: u64| off != 0 && off.is_multiple_of(cs);
        if l1_size > 0 && !aligned(self.l1_table_offset) {
            let why = "zero or not cluster aligned";
            return Err(bad(Field::L1TableOffset, self.l1_table_offset, why));
        }
        if !aligned(self.refcount_table_offset) {
            let why = "zero or not cluster aligned";
            return Err(bad(
                Field::RefcountTableOffset,
                self.refcount_table_offset,
                why,
            ));
        }
        let rt = u64::from(self.refcount_table_clusters);
        if rt == 0 || rt * cs > MAX_REFCOUNT_TABLE_BYTES {
            let why = "outside 1 cluster ..= 8 MiB";
            return Err(bad(Field::RefcountTableClusters, rt, why));
        }
        if self.nb_snapshots > MAX_SNAPSHOTS {
            let n = u64::from(self.nb_snapshots);
            return Err(bad(Field::NbSnapshots, n, "more than 65536 snapshots"));
        }
        if self.nb_snapshots > 0 && !aligned(self.snapshots_offset) {
            let why = "zero or not cluster aligned";
            return Err(bad(Field::SnapshotsOffset, self.snapshots_offset, why));
        }
        Ok(())
    }

    /// The L1 and refcount tables against the file: inside it, and apart from each other and
    /// from the header's cluster.
    pub fn check_layout(&self, file_len: u64) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        let l1 = (self.l1_table_offset, u64::from(self.l1_size) * 8);
        let rt = (
            self.refcount_table_offset,
            u64::from(self.refcount_table_clusters) * cs,
        );
        let past_end = "the table runs past the end of the file";
        if l1.1 > 0 && l1.0.saturating_add(l1.1) > file_len {
            return Err(bad(Field::L1TableOffset, l1.0, past_end));
        }
        if rt.0.saturating_add(rt.1) > file_len {
            return Err(bad(Field::RefcountTableOffset, rt.0, past_end));
        }
        // both are cluster aligned and not at 0, so apart from the header's cluster
        if l1.1 > 0 && l1.0 < rt.0 + rt.1 && rt.0 < l1.0 + l1.1 {
            let why = "the L1 table overlaps the refcount table";
            return Err(bad(Field::L1TableOffset, l1.0, why));
        }
        Ok(())
    }

    fn parse_backing(&mut self, buf: &[u8]) -> Result<(), Qcow2Error> {
        let off = be64(buf, 8);
        let len = be32(buf, 16);
        if off == 0 {
            return Ok(());
        }
        if len == 0 || len > 1023 {
            let why = "a backing file name of 1 to 1023 bytes is needed";
            return Err(bad(Field::BackingFileSize, u64::from(len), why));
        }
        let name = usize::try_from(off)
            .ok()
            .filter(|&o| off <= self.cluster_size() && o < buf.len())
            .and_then(|o| buf.get(o..o + len as usize))
            .ok_or_else(|| bad(Field::BackingFileOffset, off, "past the first cluster"))?;
        self.backing_file = Some(String::from_utf8_lossy(name).into_owned());
        Ok(())
    }

    fn parse_extensions(&mut self, buf: &[u8], header_len: u32) -> Result<(), Qcow2Error> {
        let mut at = header_len as usize;
        // bounded: each extension advances by at least 8 bytes inside the buffer
        while at + 8 <= buf.len() {
            let kind = be32(buf, at);
            let len = be32(buf, at + 4) as usize;
            let data = buf
                .get(at + 8..at + 8 + len)
                .ok_or_else(|| Qcow2Error::BadHeader("header extension out of bounds".into()))?;
            match kind {
                EXT_END => return Ok(()),
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned())
                }
                EXT_DATA_FILE => {
                    return Err(Qcow2Error::Unsupported("an external data file".into()))
                }
                _ => {} // feature names, bitmaps, ...: not needed to serve the image
            }
            at += 8 + len.div_ceil(8) * 8;
        }
        Ok(())
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// Refuse the incompatible features we do not implement (version 3), naming them.
fn check_incompatible(incompat: u64) -> Result<(), Qcow2Error> {
    let unsupported = |what: &str| Err(Qcow2Error::Unsupported(what.into()));
    if incompat & INCOMPAT_DIRTY != 0 {
        return Err(Qcow2Error::NeedsRepair("dirty (lazy refcounts)"));
    }
    if incompat & INCOMPAT_CORRUPT != 0 {
        return Err(Qcow2Error::NeedsRepair("corrupt"));
    }
    if incompat & INCOMPAT_DATA_FILE != 0 {
        return unsupported("an external data file");
    }
    if incompat & INCOMPAT_COMPRESSION != 0 {
        return unsupported("a compression type other than deflate (zstd)");
    }
    if incompat & INCOMPAT_EXTL2 != 0 {
        return unsupported("extended L2 entries (subclusters)");
    }
    if incompat != 0 {
        return Err(Qcow2Error::Unsupported(format!(
            "unknown incompatible features {incompat:#x}"
        )));
    }
    Ok(())
}
