//! qcow2 images (versions 2 and 3, as `qemu-img create -f qcow2` makes them): reads and
//! writes with cluster allocation, zero clusters, deflate-compressed clusters (read; written
//! over by copy-on-write), a read-only backing file (raw or qcow2), snapshots' shared clusters
//! left intact (copy-on-write when the COPIED flag is clear).
//!
//! Metadata is written through, in an order that keeps the image consistent after a crash
//! (see `refcount.rs`): refcounts before references, new tables before the entries pointing
//! to them, data before the L2 entry that maps it. Metadata state lives behind one mutex;
//! reads and in-place writes of allocated clusters do their data I/O outside it.

mod create;
mod grow;
mod header;
mod internal_snapshots;
mod layout;
mod refcount;
mod snapshots;
mod tables;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::file_io::{self, GuestIovecs};
use super::{backing, Disk, OpenOptions};
pub use create::create_overlay;
pub use grow::GrowError;
pub use header::Field;
pub use internal_snapshots::{SnapshotError, SnapshotInfo};
/// The first bytes of every qcow2 image ("QFI\xfb").
pub const MAGIC: [u8; 4] = header::MAGIC.to_be_bytes();
use header::Header;
use layout::Layout;
pub use layout::{Area, LayoutError};
use refcount::Refcounts;
use tables::{Mapping, Tables, COPIED, ZERO};

/// Why a qcow2 image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("malformed qcow2 header: {0}")]
    BadHeader(String),
    #[error("the qcow2 header field {field} = {value:#x} is invalid: {reason}")]
    BadField {
        field: Field,
        value: u64,
        reason: String,
    },
    #[error("snapshot {index} in the snapshot table is invalid: {reason}")]
    BadSnapshot { index: u32, reason: String },
    #[error("the image uses {0}, which splitvisor-blk does not support")]
    Unsupported(String),
    #[error("the image is marked {0}: run `qemu-img check -r all` on it first")]
    NeedsRepair(&'static str),
    #[error("cannot read the image's metadata")]
    Io(#[from] io::Error),
    #[error(transparent)]
    BackingRefused(#[from] super::backing::BackingError),
    #[error("cannot open the backing file {path}")]
    Backing {
        path: PathBuf,
        #[source]
        source: Box<super::OpenError>,
    },
}

/// Backing chains deeper than this are refused (and loops with them).
const MAX_BACKING_DEPTH: u32 = 16;

/// An open qcow2 image.
pub struct Qcow2Disk {
    file: File,
    cluster_bits: u32,
    /// The virtual size (it grows online: [`Qcow2Disk::grow_to`]).
    size: AtomicU64,
    version: u32,
    readonly: bool,
    backing: Option<Box<dyn Disk>>,
    meta: Mutex<Meta>,
}

struct Meta {
    tables: Tables,
    refs: Refcounts,
    /// Where the file holds what: every offset and write is checked against it.
    layout: Layout,
}

/// A piece of a request inside one guest cluster.
struct Piece {
    /// Offset in the request's buffers.
    buf: usize,
    /// Guest offset.
    guest: u64,
    len: usize,
}

impl Qcow2Disk {
    /// Open the image in `file` (already opened with the caller's options).
    pub fn open(
        file: File,
        path: &Path,
        opts: &OpenOptions,
        depth: u32,
    ) -> Result<Self, Qcow2Error> {
        Self::open_on(file, path, opts, depth, None)
    }

    /// Open an overlay whose backing file the caller already has open as `backing` (a disk
    /// switched to its new overlay keeps reading its old image through the same handle).
    pub fn open_over(
        file: File,
        path: &Path,
        opts: &OpenOptions,
        backing: Box<dyn Disk>,
    ) -> Result<Self, Qcow2Error> {
        Self::open_on(file, path, opts, 0, Some(backing))
    }

    fn open_on(
        file: File,
        path: &Path,
        opts: &OpenOptions,
        depth: u32,
        given: Option<Box<dyn Disk>>,
    ) -> Result<Self, Qcow2Error> {
        let (header, first) = read_header(&file)?;
        let meta = load_meta(&file, &header)?;
        let backing = match (&header.backing_file, given) {
            (Some(_), Some(given)) => Some(given),
            (Some(name), None) => Some(open_backing(
                path,
                name,
                header.backing_format.as_deref(),
                opts,
                depth,
            )?),
            (None, _) => None,
        };
        // written only once the image passed every check
        if !opts.readonly && header.version == 3 && first.get(88..96) != Some(&[0u8; 8][..]) {
            // autoclear features (e.g. persistent bitmaps) we do not keep up to date
            file.write_all_at(&[0u8; 8], 88)?;
        }
        Ok(Qcow2Disk {
            file,
            cluster_bits: header.cluster_bits,
            size: AtomicU64::new(header.size & !511),
            version: header.version,
            readonly: opts.readonly,
            backing,
            meta: Mutex::new(meta),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn meta(&self) -> io::Result<std::sync::MutexGuard<'_, Meta>> {
        self.meta
            .lock()
            .map_err(|_| io::Error::other("qcow2 metadata lock poisoned"))
    }

    /// Split `len` bytes at `offset` into per-cluster pieces.
    fn pieces(&self, offset: u64, len: u64) -> Vec<Piece> {
        let cs = self.cluster_size();
        let mut out = Vec::new();
        let mut done = 0u64;
        while done < len {
            let guest = offset + done;
            let n = (cs - guest % cs).min(len - done);
            out.push(Piece {
                buf: done as usize,
                guest,
                len: n as usize,
            });
            done += n;
        }
        out
    }

    /// Fill `bufs` with what an unallocated range reads as: the backing file, or zeroes.
    fn read_unallocated(&self, bufs: &GuestIovecs, guest: u64) -> io::Result<()> {
        let Some(backing) = &self.backing else {
            bufs.fill_zero();
            return Ok(());
        };
        let cap = backing.capacity();
        let len = bufs.len() as u64;
        let inside = cap.saturating_sub(guest).min(len) as usize;
        if inside > 0 {
            backing.read_at(&bufs.sub(0, inside), guest)?;
        }
        if inside < bufs.len() {
            bufs.sub(inside, bufs.len() - inside).fill_zero();
        }
        Ok(())
    }

    /// One whole guest cluster, decompressed.
    fn read_compressed(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut raw = vec![0u8; len as usize];
        let n = self.file.read_at(&mut raw, offset)?;
        raw.truncate(n);
        let cs = self.cluster_size() as usize;
        let mut out =
            miniz_oxide::inflate::decompress_to_vec_with_limit(&raw, cs).map_err(|e| {
                io::Error::other(format!("corrupt compressed cluster at {offset:#x}: {e:?}"))
            })?;
        out.resize(cs, 0);
        Ok(out)
    }

    fn read_piece(&self, bufs: &GuestIovecs, p: &Piece, m: Mapping) -> io::Result<()> {
        let part = bufs.sub(p.buf, p.len);
        let in_cluster = p.guest % self.cluster_size();
        match m {
            Mapping::Unallocated => self.read_unallocated(&part, p.guest),
            Mapping::Zero(_) => {
                part.fill_zero();
                Ok(())
            }
            Mapping::Data { offset, .. } => {
                file_io::read_exact_at(&self.file, &part, offset + in_cluster)
            }
            Mapping::Compressed { offset, len } => {
                let data = self.read_compressed(offset, len)?;
                part.copy_from(&data[in_cluster as usize..in_cluster as usize + p.len]);
                Ok(())
            }
        }
    }

    /// The current content of the guest cluster starting at `guest` (for copy-on-write).
    fn cluster_content(&self, guest: u64, m: Mapping) -> io::Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        match m {
            Mapping::Compressed { offset, len } => self.read_compressed(offset, len),
            Mapping::Zero(_) => Ok(vec![0u8; cs]),
            other => {
                let mut buf = vec![0u8; cs];
                let bufs = GuestIovecs::from_buf(&mut buf);
                let whole = Piece {
                    buf: 0,
                    guest,
                    len: cs,
                };
                self.read_piece(&bufs, &whole, other)?;
                drop(bufs);
                Ok(buf)
            }
        }
    }

    /// Write one piece into a freshly allocated cluster, copying the rest of the cluster from
    /// its current content, then map it. Called with the metadata lock held.
    fn write_allocating(
        &self,
        meta: &mut Meta,
        src: Source,
        p: &Piece,
        old: Mapping,
    ) -> io::Result<()> {
        let cs = self.cluster_size();
        let cluster_start = p.guest - p.guest % cs;
        let new = meta.refs.allocate(&self.file, &mut meta.layout)?;
        meta.layout.check_write(Area::DataCluster, new, cs, None)?;
        if p.len as u64 == cs {
            src.write(&self.file, p, new)?;
        } else {
            let mut buf = self.cluster_content(cluster_start, old)?;
            let at = (p.guest - cluster_start) as usize;
            src.copy_into(p, &mut buf[at..at + p.len]);
            self.file.write_all_at(&buf, new)?;
        }
        meta.tables.set(
            &self.file,
            &mut meta.refs,
            &mut meta.layout,
            cluster_start >> self.cluster_bits,
            new | COPIED,
        )?;
        for c in tables::referenced_clusters(old, self.cluster_bits) {
            meta.refs.release_later(c);
        }
        Ok(())
    }

    fn write(&self, src: Source, offset: u64, len: u64) -> io::Result<()> {
        let pieces = self.pieces(offset, len);
        let mut meta = self.meta()?;
        let m = &mut *meta;
        for p in &pieces {
            let cluster = p.guest >> self.cluster_bits;
            match m.tables.lookup(&self.file, &m.layout, cluster)? {
                Mapping::Data {
                    offset: host,
                    copied: true,
                } => {
                    let at = host + p.guest % self.cluster_size();
                    m.layout
                        .check_write(Area::DataCluster, at, p.len as u64, None)?;
                    src.write(&self.file, p, at)?
                }
                old => self.write_allocating(m, src, p, old)?,
            }
        }
        Ok(())
    }

    /// Make whole guest clusters read as zeroes (`zero`) or drop them (discard). Ranges that
    /// do not cover a whole cluster are written with zeroes (`zero`) or left alone.
    fn deallocate(&self, offset: u64, len: u64, zero: bool) -> io::Result<()> {
        let cs = self.cluster_size();
        // without the zero flag (v2), "unallocated" reads zero only without a backing file
        let can_flag = self.version >= 3;
        let can_unmap = self.backing.is_none();
        for p in self.pieces(offset, len) {
            let whole = p.len as u64 == cs;
            if !whole || (zero && !can_flag && !can_unmap) {
                if zero {
                    self.write(Source::Zeroes, p.guest, p.len as u64)?;
                }
                continue;
            }
            let mut meta = self.meta()?;
            let cluster = p.guest >> self.cluster_bits;
            let entry = if can_unmap && (!zero || !can_flag) {
                0
            } else if can_flag {
                ZERO
            } else {
                continue;
            };
            if entry == 0 && !meta.tables.has_l2(cluster) {
                continue;
            }
            let m = &mut *meta;
            // checked before anything it references is released
            let old = m.tables.lookup(&self.file, &m.layout, cluster)?;
            m.tables
                .set(&self.file, &mut m.refs, &mut m.layout, cluster, entry)?;
            for c in tables::referenced_clusters(old, self.cluster_bits) {
                m.refs.release_later(c);
            }
        }
        Ok(())
    }
}

/// Where written bytes come from.
#[derive(Clone, Copy)]
enum Source<'a, 'b> {
    Guest(&'a GuestIovecs<'b>),
    Zeroes,
}

impl Source<'_, '_> {
    /// Write the piece's bytes at host offset `host`.
    fn write(&self, file: &File, p: &Piece, host: u64) -> io::Result<()> {
        match self {
            Source::Guest(bufs) => file_io::write_all_at(file, &bufs.sub(p.buf, p.len), host),
            Source::Zeroes => file.write_all_at(&vec![0u8; p.len], host),
        }
    }

    /// Copy the piece's bytes into `out`.
    fn copy_into(&self, p: &Piece, out: &mut [u8]) {
        match self {
            Source::Guest(bufs) => bufs.sub(p.buf, p.len).copy_to(out),
            Source::Zeroes => out.fill(0),
        }
    }
}

impl Disk for Qcow2Disk {
    fn capacity(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn grow(&self, new_size: u64) -> io::Result<u64> {
        self.grow_to(new_size).map_err(|e| match e {
            GrowError::Image(SnapshotError::Io(io)) => io,
            other => io::Error::new(io::ErrorKind::InvalidInput, api::error_chain(&other)),
        })
    }

    fn qcow2(&self) -> Option<&Qcow2Disk> {
        Some(self)
    }

    fn read_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
        let pieces = self.pieces(offset, bufs.len() as u64);
        let maps = {
            let mut meta = self.meta()?;
            let m = &mut *meta;
            pieces
                .iter()
                .map(|p| {
                    m.tables
                        .lookup(&self.file, &m.layout, p.guest >> self.cluster_bits)
                })
                .collect::<io::Result<Vec<_>>>()?
        };
        for (p, m) in pieces.iter().zip(maps) {
            self.read_piece(bufs, p, m)?;
        }
        Ok(())
    }

    fn write_at(&self, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
        self.write(Source::Guest(bufs), offset, bufs.len() as u64)
    }

    fn flush(&self) -> io::Result<()> {
        let mut meta = self.meta()?;
        self.file.sync_data()?;
        // the references dropped since the last flush are stable: free their clusters
        let m = &mut *meta;
        m.refs.apply_pending_frees(&self.file, &mut m.layout)
    }

    fn close(&self) -> io::Result<()> {
        self.flush()?;
        let mut meta = self.meta()?;
        let m = &mut *meta;
        m.refs.return_reserve(&self.file, &mut m.layout)?;
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.deallocate(offset, len, false)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.deallocate(offset, len, true)
    }
}

/// Fill `buf` (zeroed) from the start of the file; what lies past the end of the file stays
/// zero, as QEMU reads it (an image with 512-byte clusters can be shorter than 4 KiB).
fn read_head(file: &File, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The header (and the first cluster's bytes, extensions included).
fn read_header(file: &File) -> Result<(Header, Vec<u8>), Qcow2Error> {
    let mut first = vec![0u8; 4096];
    read_head(file, &mut first)?;
    let mut header = Header::parse(&first)?;
    if header.cluster_size() > 4096 {
        // header extensions may use the whole first cluster
        first = vec![0u8; header.cluster_size() as usize];
        read_head(file, &mut first)?;
        header = Header::parse(&first)?;
    }
    Ok((header, first))
}

/// The metadata state of the image `header` describes: its layout checked, the L1 and
/// refcount tables read.
fn load_meta(file: &File, header: &Header) -> Result<Meta, Qcow2Error> {
    let file_len = file.metadata()?.len();
    header.check_layout(file_len)?;
    let mut layout = image_layout(file, header, file_len)?;
    let tables = Tables::load(
        file,
        &mut layout,
        header.cluster_bits,
        header.l1_table_offset,
        header.l1_size,
    )?;
    let refs = Refcounts::load(
        file,
        &mut layout,
        header.cluster_bits,
        header.refcount_order,
        header.refcount_table_offset,
        header.refcount_table_clusters,
    )?;
    Ok(Meta {
        tables,
        refs,
        layout,
    })
}

/// The image's fixed metadata regions (header cluster, L1 and refcount tables, snapshot
/// table and snapshot L1 tables); the snapshot regions must keep clear of the others.
fn image_layout(file: &File, header: &Header, file_len: u64) -> Result<Layout, Qcow2Error> {
    let cs = header.cluster_size();
    let mut layout = Layout::new(header.cluster_bits, file_len);
    layout.add_span(Area::Header, 0, cs);
    let l1_len = u64::from(header.l1_size) * 8;
    layout.add_span(Area::L1Table, header.l1_table_offset, l1_len);
    let rt_len = u64::from(header.refcount_table_clusters) * cs;
    layout.add_span(Area::RefcountTable, header.refcount_table_offset, rt_len);
    let snapshot_regions = snapshots::regions(file, header, file_len)?;
    for &(area, offset, len) in &snapshot_regions {
        if let Err(e) = layout.check_write(area, offset, len, None) {
            return Err(Qcow2Error::BadField {
                field: Field::SnapshotsOffset,
                value: header.snapshots_offset,
                reason: e.to_string(),
            });
        }
    }
    for (area, offset, len) in snapshot_regions {
        layout.add_span(area, offset, len);
    }
    Ok(layout)
}

/// Open the backing file named in the header (relative names are relative to the image),
/// under `backing.rs`'s rules.
fn open_backing(
    image: &Path,
    name: &str,
    format: Option<&str>,
    opts: &OpenOptions,
    depth: u32,
) -> Result<Box<dyn Disk>, Qcow2Error> {
    let format = backing::format(name, format, opts.format)?;
    let path = backing::resolve(image, name, &opts.backing_dirs)?;
    let backing_opts = OpenOptions {
        readonly: true,
        direct: opts.direct,
        format,
        backing_dirs: opts.backing_dirs.clone(),
    };
    if depth >= MAX_BACKING_DEPTH {
        return Err(Qcow2Error::Unsupported(format!(
            "a backing chain deeper than {MAX_BACKING_DEPTH}"
        )));
    }
    super::open_at_depth(&path, &backing_opts, depth + 1).map_err(|e| Qcow2Error::Backing {
        path: path.clone(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod crafted_tests;
#[cfg(test)]
mod tests;
