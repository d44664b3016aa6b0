//! Making a new, empty qcow2 image whose backing file is another image: the overlay an
//! external snapshot switches a disk to (`reopen`, `svctl snapshot-create-as --disk-only`).
//! The same layout `qemu-img create -f qcow2 -b BASE -F FMT` writes (version 3, 64 KiB
//! clusters, 16-bit refcounts): the header with the backing format extension and the backing
//! file name in cluster 0, the refcount table in cluster 1, its one block in cluster 2 (the
//! four metadata clusters counted), the L1 table from cluster 3.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::header::MAGIC;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Header extension: the backing file's format.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// Create `path` (it must not exist) as an empty qcow2 image of `size` bytes reading through
/// to `backing` (`backing_format`: raw or qcow2), named as given (relative to the overlay's
/// directory, or absolute).
pub fn create_overlay(
    path: &Path,
    backing: &str,
    backing_format: &str,
    size: u64,
) -> io::Result<()> {
    let l1_entries = size.div_ceil(CLUSTER * (CLUSTER / 8)).max(1);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
    let clusters = 3 + l1_clusters;
    let mut image = vec![0u8; (clusters * CLUSTER) as usize];
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    // extensions from byte 104: the backing format (padded to 8 bytes), then the end marker;
    // the backing file name after them
    let fmt = backing_format.as_bytes();
    let ext_len = 8 + fmt.len().div_ceil(8) * 8 + 8;
    let name_at = 104 + ext_len;
    if name_at + backing.len() > CLUSTER as usize || backing.len() > 1023 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the backing file name is too long for a qcow2 header",
        ));
    }
    let h = &mut image;
    put32(h, 0, MAGIC);
    put32(h, 4, 3);
    put64(h, 8, name_at as u64);
    put32(h, 16, backing.len() as u32);
    put32(h, 20, CLUSTER_BITS);
    put64(h, 24, size);
    put32(h, 36, l1_entries as u32);
    put64(h, 40, 3 * CLUSTER);
    put64(h, 48, CLUSTER);
    put32(h, 56, 1);
    put32(h, 96, 4); // refcount_order: 16-bit
    put32(h, 100, 104); // header_length
    put32(h, 104, EXT_BACKING_FORMAT);
    put32(h, 108, fmt.len() as u32);
    h[112..112 + fmt.len()].copy_from_slice(fmt);
    h[name_at..name_at + backing.len()].copy_from_slice(backing.as_bytes());
    // the refcount table's first entry: the block in cluster 2, where each of the image's
    // clusters has refcount 1
    put64(h, CLUSTER as usize, 2 * CLUSTER);
    for c in 0..clusters as usize {
        h[2 * CLUSTER as usize + 2 * c + 1] = 1;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&image)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::qcow2::tests::{assert_clean, converted, pattern, qemu_img, rw, Dir};
    use crate::disk::{open, GuestIovecs};

    #[test]
    fn an_overlay_reads_through_to_its_base_and_takes_the_writes() {
        let dir = Dir::new("overlay");
        let base = dir.path("base.raw");
        let base_bytes = pattern(3, 4 << 20);
        std::fs::write(&base, &base_bytes).unwrap();
        let overlay = dir.path("top.qcow2");
        create_overlay(&overlay, "base.raw", "raw", 4 << 20).unwrap();
        assert!(
            create_overlay(&overlay, "base.raw", "raw", 4 << 20).is_err(),
            "never over an existing file"
        );
        assert_clean(&overlay);
        let info = String::from_utf8_lossy(
            &qemu_img(&["info", "--output=json", overlay.to_str().unwrap()]).stdout,
        )
        .into_owned();
        assert!(
            info.contains("\"backing-filename\": \"base.raw\""),
            "{info}"
        );
        assert!(
            info.contains("\"backing-filename-format\": \"raw\""),
            "{info}"
        );
        assert_eq!(converted(&dir, &overlay), base_bytes);
        // ours reads it the same and writes into it, the base untouched
        let disk = open(&overlay, &rw()).unwrap();
        let mut buf = vec![0u8; 4 << 20];
        disk.read_at(&GuestIovecs::from_buf(&mut buf), 0).unwrap();
        assert_eq!(buf, base_bytes);
        let mut data = pattern(9, 8192);
        disk.write_at(&GuestIovecs::from_buf(&mut data), 65536 - 4096)
            .unwrap();
        disk.close().unwrap();
        drop(disk);
        assert_clean(&overlay);
        let mut want = base_bytes.clone();
        want[65536 - 4096..65536 + 4096].copy_from_slice(&pattern(9, 8192));
        assert_eq!(converted(&dir, &overlay), want);
        assert_eq!(std::fs::read(&base).unwrap(), base_bytes);
    }
}
