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
    pub refcount_order: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

impl Header {
    /// Parse and validate the header from the image's first cluster (at least 4 KiB of it).
    pub fn parse(buf: &[u8]) -> Result<Header, Qcow2Error> {
        let bad = |what: &str| Qcow2Error::BadHeader(what.to_string());
        if buf.len() < V2_HEADER_LEN as usize || be32(buf, 0) != MAGIC {
            return Err(bad("no qcow2 magic"));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(&format!("cluster_bits {cluster_bits} outside 9..21")));
        }
        if be32(buf, 32) != 0 {
            return Err(Qcow2Error::Unsupported("encrypted images".into()));
        }
        let (header_len, refcount_order) = if version == 3 {
            let incompat = be64(buf, 72);
            if incompat & INCOMPAT_DIRTY != 0 {
                return Err(Qcow2Error::Unsupported(
                    "the image is marked dirty (lazy refcounts): run `qemu-img check -r all` first"
                        .into(),
                ));
            }
            if incompat & INCOMPAT_CORRUPT != 0 {
                return Err(Qcow2Error::Unsupported(
                    "the image is marked corrupt: run `qemu-img check -r all` first".into(),
                ));
            }
            if incompat & INCOMPAT_DATA_FILE != 0 {
                return Err(Qcow2Error::Unsupported("an external data file".into()));
            }
            if incompat & INCOMPAT_COMPRESSION != 0 {
                return Err(Qcow2Error::Unsupported(
                    "a compression type other than deflate (zstd)".into(),
                ));
            }
            if incompat & INCOMPAT_EXTL2 != 0 {
                return Err(Qcow2Error::Unsupported(
                    "extended L2 entries (subclusters)".into(),
                ));
            }
            if incompat != 0 {
                return Err(Qcow2Error::Unsupported(format!(
                    "unknown incompatible features {incompat:#x}"
                )));
            }
            (be32(buf, 100), be32(buf, 96))
        } else {
            (V2_HEADER_LEN, 4)
        };
        if !(3..=6).contains(&refcount_order) {
            return Err(Qcow2Error::Unsupported(format!(
                "{}-bit refcounts (8 to 64 are supported)",
                1u64 << refcount_order.min(63)
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        if u64::from(header_len) > cluster_size || header_len as usize > buf.len() {
            return Err(bad("header longer than its cluster"));
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
            refcount_order,
        };
        for (name, off) in [
            ("L1 table", header.l1_table_offset),
            ("refcount table", header.refcount_table_offset),
        ] {
            if off == 0 || off % cluster_size != 0 {
                return Err(bad(&format!("{name} offset {off:#x} not cluster aligned")));
            }
        }
        // the L1 table must cover the virtual size
        let l2_entries = cluster_size / 8;
        let needed = header.size.div_ceil(cluster_size * l2_entries);
        if u64::from(header.l1_size) < needed || header.l1_size > (32 << 20) / 8 {
            return Err(bad("L1 table size does not match the virtual size"));
        }
        header.parse_backing(buf)?;
        header.parse_extensions(buf, header_len)?;
        Ok(header)
    }

    fn parse_backing(&mut self, buf: &[u8]) -> Result<(), Qcow2Error> {
        let off = be64(buf, 8) as usize;
        let len = be32(buf, 16) as usize;
        if off == 0 {
            return Ok(());
        }
        let name = buf
            .get(off..off.saturating_add(len))
            .filter(|_| len > 0 && len <= 1023)
            .ok_or_else(|| Qcow2Error::BadHeader("backing file name out of bounds".into()))?;
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
