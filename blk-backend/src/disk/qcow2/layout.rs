//! Where the image file holds what: the file's extent and every metadata region (QEMU's
//! `qcow2_check_metadata_overlap` idea). Offsets read from the image are checked here before
//! they are used (cluster aligned, inside the file, not on metadata of another kind), and every
//! write to the file is checked here before it is issued, so that a crafted or damaged image
//! can fail a request but never make us write over the header, an L1, L2 or refcount table,
//! a refcount block or the snapshot table.
//!
//! Kept up to date as tables are allocated and dropped. Large fixed regions (from the header)
//! are spans; L2 tables and refcount blocks are single clusters in a sorted map, so a check
//! costs a couple of `BTreeMap` range lookups.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

/// What a region of the image file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    Header,
    L1Table,
    RefcountTable,
    SnapshotTable,
    SnapshotL1Table,
    L2Table,
    RefcountBlock,
    DataCluster,
    CompressedCluster,
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Area::Header => "image header",
            Area::L1Table => "L1 table",
            Area::RefcountTable => "refcount table",
            Area::SnapshotTable => "snapshot table",
            Area::SnapshotL1Table => "L1 table of a snapshot",
            Area::L2Table => "L2 table",
            Area::RefcountBlock => "refcount block",
            Area::DataCluster => "data cluster",
            Area::CompressedCluster => "compressed cluster",
        })
    }
}

/// Why an offset found in the image, or a write to it, is refused. The request fails with
/// an I/O error carrying this; the image is not written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("the {area} at {offset:#x} named by the image is not cluster aligned")]
    Misaligned { area: Area, offset: u64 },
    #[error("the {area} at {offset:#x} named by the image lies past the end of the image file ({end:#x})")]
    PastEnd { area: Area, offset: u64, end: u64 },
    #[error("the {area} at {offset:#x} named by the image overlaps the {other}")]
    Overlap {
        area: Area,
        offset: u64,
        other: Area,
    },
    #[error(
        "refusing to write {len} bytes of {area} at {offset:#x}: they would overwrite the {other}"
    )]
    WriteOverlap {
        area: Area,
        offset: u64,
        len: u64,
        other: Area,
    },
    #[error("no free cluster among the {scanned} clusters searched: the refcounts mark the whole image in use")]
    NoFreeCluster { scanned: u64 },
    #[error("cluster {cluster} is beyond what the refcount table covers (the table is not grown)")]
    BeyondRefcountTable { cluster: u64 },
}

impl From<LayoutError> for io::Error {
    fn from(e: LayoutError) -> io::Error {
        io::Error::other(e)
    }
}

pub struct Layout {
    cluster_bits: u32,
    /// Clusters below this index are inside the file or were allocated by us.
    end_cluster: u64,
    /// Multi-cluster regions: (first cluster, area) → end cluster (exclusive).
    spans: BTreeMap<(u64, Area), u64>,
    /// The longest span, in clusters (how far back a span may start and still reach).
    longest_span: u64,
    /// Single-cluster regions (L2 tables, refcount blocks), counted: a crafted image may
    /// point twice at one.
    singles: BTreeMap<(u64, Area), u32>,
}

impl Layout {
    pub fn new(cluster_bits: u32, file_len: u64) -> Layout {
        Layout {
            cluster_bits,
            end_cluster: file_len.div_ceil(1 << cluster_bits),
            spans: BTreeMap::new(),
            longest_span: 0,
            singles: BTreeMap::new(),
        }
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Clusters below this index exist (in the file or allocated by us).
    pub fn end_cluster(&self) -> u64 {
        self.end_cluster
    }

    /// A cluster was allocated: the file extends (at least) to its end.
    pub fn grow_to_cluster(&mut self, cluster: u64) {
        self.end_cluster = self.end_cluster.max(cluster.saturating_add(1));
    }

    /// Record a region of `len` bytes at `offset` (header, L1 table, refcount table, snapshot
    /// table, a snapshot's L1 table).
    pub fn add_span(&mut self, area: Area, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset >> self.cluster_bits;
        let end = offset.saturating_add(len).div_ceil(self.cluster_size());
        let slot = self.spans.entry((first, area)).or_insert(end);
        *slot = (*slot).max(end);
        self.longest_span = self.longest_span.max(end - first);
    }

    /// Record a one-cluster table (L2 table, refcount block) at `offset`.
    pub fn add(&mut self, area: Area, offset: u64) {
        *self
            .singles
            .entry((offset >> self.cluster_bits, area))
            .or_insert(0) += 1;
    }

    /// A one-cluster table is no longer in use.
    pub fn remove(&mut self, area: Area, offset: u64) {
        let key = (offset >> self.cluster_bits, area);
        if let Some(n) = self.singles.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.singles.remove(&key);
            }
        }
    }

    /// The metadata (other than `ignore`) on clusters `first..end`, if any.
    fn overlap(&self, first: u64, end: u64, ignore: Option<Area>) -> Option<Area> {
        let lo = (first, Area::Header);
        let hi = (end, Area::Header);
        let single = self
            .singles
            .range(lo..hi)
            .map(|((_, area), _)| *area)
            .find(|a| Some(*a) != ignore);
        if single.is_some() {
            return single;
        }
        let from = (first.saturating_sub(self.longest_span), Area::Header);
        self.spans
            .range(from..hi)
            .filter(|(_, span_end)| **span_end > first)
            .map(|((_, area), _)| *area)
            .find(|a| Some(*a) != ignore)
    }

    /// Whether host cluster `cluster` holds metadata.
    pub fn is_metadata(&self, cluster: u64) -> bool {
        self.overlap(cluster, cluster + 1, None).is_some()
    }

    /// The metadata clusters among `first..end`, ascending (each once).
    pub fn metadata_clusters(&self, first: u64, end: u64) -> Vec<u64> {
        let lo = (first, Area::Header);
        let hi = (end, Area::Header);
        let mut out: Vec<u64> = self.singles.range(lo..hi).map(|((c, _), _)| *c).collect();
        let from = (first.saturating_sub(self.longest_span), Area::Header);
        for ((start, _), span_end) in self.spans.range(from..hi) {
            out.extend((*start).max(first)..(*span_end).min(end));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Check a cluster offset read from the image for a table or data cluster of kind `area`:
    /// cluster aligned, inside the file, and not on metadata of another kind.
    pub fn check_cluster(&self, area: Area, offset: u64) -> Result<u64, LayoutError> {
        if offset & (self.cluster_size() - 1) != 0 {
            return Err(LayoutError::Misaligned { area, offset });
        }
        let cluster = offset >> self.cluster_bits;
        self.check_inside(area, offset, cluster)?;
        match self.overlap(cluster, cluster + 1, Some(area)) {
            Some(other) => Err(LayoutError::Overlap {
                area,
                offset,
                other,
            }),
            None => Ok(offset),
        }
    }

    /// Check the `len` bytes of compressed data at `offset` read from an L2 entry.
    pub fn check_compressed(&self, offset: u64, len: u64) -> Result<(), LayoutError> {
        let area = Area::CompressedCluster;
        let first = offset >> self.cluster_bits;
        self.check_inside(area, offset, first)?;
        let end = (offset.saturating_add(len.max(1)) - 1) >> self.cluster_bits;
        match self.overlap(first, end.saturating_add(1), None) {
            Some(other) => Err(LayoutError::Overlap {
                area,
                offset,
                other,
            }),
            None => Ok(()),
        }
    }

    fn check_inside(&self, area: Area, offset: u64, cluster: u64) -> Result<(), LayoutError> {
        if cluster >= self.end_cluster {
            return Err(LayoutError::PastEnd {
                area,
                offset,
                end: self.end_cluster << self.cluster_bits,
            });
        }
        Ok(())
    }

    /// Before writing `len` bytes of `area` at `offset`: refused when they would land on
    /// metadata (other than `own`, the table being updated in place) or past the clusters
    /// that exist or were allocated.
    pub fn check_write(
        &self,
        area: Area,
        offset: u64,
        len: u64,
        own: Option<Area>,
    ) -> Result<(), LayoutError> {
        let first = offset >> self.cluster_bits;
        let last = (offset.saturating_add(len.max(1)) - 1) >> self.cluster_bits;
        self.check_inside(area, offset, last)?;
        match self.overlap(first, last + 1, own) {
            Some(other) => Err(LayoutError::WriteOverlap {
                area,
                offset,
                len,
                other,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        // 64 KiB clusters, a file of 16 clusters
        let mut l = Layout::new(16, 16 << 16);
        l.add_span(Area::Header, 0, 1 << 16);
        l.add_span(Area::L1Table, 3 << 16, 3 << 16); // clusters 3..6
        l.add(Area::L2Table, 8 << 16);
        l.add(Area::RefcountBlock, 9 << 16);
        l
    }

    #[test]
    fn offsets_are_checked_for_alignment_extent_and_overlap() {
        let l = layout();
        assert_eq!(l.check_cluster(Area::DataCluster, 7 << 16), Ok(7 << 16));
        assert_eq!(l.check_cluster(Area::L2Table, 8 << 16), Ok(8 << 16));
        let misaligned = (7 << 16) + 512;
        assert_eq!(
            l.check_cluster(Area::DataCluster, misaligned),
            Err(LayoutError::Misaligned {
                area: Area::DataCluster,
                offset: misaligned
            })
        );
        assert!(matches!(
            l.check_cluster(Area::L2Table, 16 << 16),
            Err(LayoutError::PastEnd { .. })
        ));
        for (c, other) in [
            (0, Area::Header),
            (5, Area::L1Table),
            (9, Area::RefcountBlock),
        ] {
            assert_eq!(
                l.check_cluster(Area::L2Table, c << 16),
                Err(LayoutError::Overlap {
                    area: Area::L2Table,
                    offset: c << 16,
                    other
                })
            );
        }
    }

    #[test]
    fn writes_are_refused_on_metadata_but_a_table_may_update_itself() {
        let mut l = layout();
        assert!(l
            .check_write(Area::DataCluster, 6 << 16, 1 << 16, None)
            .is_ok());
        assert!(l
            .check_write(Area::DataCluster, (6 << 16) - 1, 2, None)
            .is_err());
        assert!(l
            .check_write(Area::L2Table, (8 << 16) + 8, 8, Some(Area::L2Table))
            .is_ok());
        assert!(l
            .check_write(Area::DataCluster, 8 << 16, 512, None)
            .is_err());
        l.remove(Area::L2Table, 8 << 16);
        assert!(l.check_write(Area::DataCluster, 8 << 16, 512, None).is_ok());
        assert!(l
            .check_write(Area::DataCluster, 16 << 16, 512, None)
            .is_err());
        l.grow_to_cluster(16);
        assert!(l
            .check_write(Area::DataCluster, 16 << 16, 512, None)
            .is_ok());
        assert_eq!(l.metadata_clusters(0, 16), vec![0, 3, 4, 5, 9]);
        assert_eq!(l.metadata_clusters(4, 9), vec![4, 5]);
    }
}
