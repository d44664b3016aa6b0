//! Growing a qcow2 image while it is served (`blockresize`, `vm.resize-disk`): the virtual
//! size goes up, and when the L1 table is too short for it a longer copy replaces it, the
//! way `qemu-img resize` does it. The L2 tables and data clusters stay where they are.
//!
//! Crash order: the new L1 table is written and synced before the header points to it (size,
//! l1_size and l1_table_offset change in one write), and the old table is freed only after;
//! a crash in between leaks at most the clusters of one table.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::header::MAX_L1_ENTRIES;
use super::internal_snapshots::SnapshotError;
use super::layout::Area;
use super::tables::read_be64s;
use super::Qcow2Disk;

/// Why an image cannot take a new size.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("the new size {0} is not a multiple of 512 bytes")]
    Unaligned(u64),
    #[error("the disk has {current} bytes; shrinking it to {wanted} is refused (data past the end would be lost)")]
    Shrink { current: u64, wanted: u64 },
    #[error("{0} bytes need an L1 table larger than 32 MiB")]
    TooLarge(u64),
    #[error(
        "the image has internal snapshots that do not record their disk size (a version 2 \
         image): growing it would change theirs (qemu-img refuses it too)"
    )]
    SnapshotsWithoutSize,
    #[error(transparent)]
    Image(#[from] SnapshotError),
}

impl From<io::Error> for GrowError {
    fn from(e: io::Error) -> Self {
        GrowError::Image(SnapshotError::Io(e))
    }
}

impl Qcow2Disk {
    /// Make the virtual size `new_size` bytes (not smaller than now). Returns the new size.
    pub fn grow_to(&self, new_size: u64) -> Result<u64, GrowError> {
        if !new_size.is_multiple_of(512) {
            return Err(GrowError::Unaligned(new_size));
        }
        let mut guard = self.writable_meta()?;
        let m = &mut *guard;
        let header = self.quiesce(m)?;
        let (snapshots, _) = self.table(&header)?;
        if snapshots.iter().any(|e| e.extra.len() < 16) {
            return Err(GrowError::SnapshotsWithoutSize);
        }
        if new_size < header.size {
            return Err(GrowError::Shrink {
                current: header.size,
                wanted: new_size,
            });
        }
        let cs = self.cluster_size();
        let needed = new_size.div_ceil(cs * (cs / 8));
        if needed > MAX_L1_ENTRIES {
            return Err(GrowError::TooLarge(new_size));
        }
        // size, (crypt_method,) l1_size and l1_table_offset: bytes 24..48, one write
        let mut fields = [0u8; 24];
        self.file.read_exact_at(&mut fields, 24)?;
        fields[0..8].copy_from_slice(&new_size.to_be_bytes());
        let old_l1 = (needed > u64::from(header.l1_size)).then_some(header.l1_table_offset);
        if old_l1.is_some() {
            let mut l1 = read_be64s(&self.file, header.l1_table_offset, header.l1_size as usize)?;
            l1.resize(needed as usize, 0);
            let bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
            let offset = self.write_new(m, Area::L1Table, &bytes)?;
            self.file.sync_data()?;
            fields[12..16].copy_from_slice(&(needed as u32).to_be_bytes());
            fields[16..24].copy_from_slice(&offset.to_be_bytes());
        }
        m.layout
            .check_write(Area::Header, 24, 24, Some(Area::Header))
            .map_err(io::Error::from)?;
        self.file.write_all_at(&fields, 24)?;
        self.file.sync_data()?;
        if let Some(old) = old_l1 {
            self.free_run(m, old, u64::from(header.l1_size) * 8)?;
            self.file.sync_data()?;
        }
        self.reload(m)?;
        self.size.store(new_size, Ordering::Release);
        tracing::info!(
            "qcow2: grown from {} to {new_size} bytes{}",
            header.size,
            if old_l1.is_some() {
                format!(" (L1 table now {needed} entries)")
            } else {
                String::new()
            }
        );
        Ok(new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_clean_and_equal, pattern, qemu_img, read, rw, write, Dir};
    use crate::disk::open;

    const MIB: u64 = 1 << 20;

    /// 4 KiB clusters: one L1 entry maps 2 MiB, so growing 1 MiB → 64 MiB needs a longer
    /// L1 table; a snapshot made by qemu-img keeps its own size and tree.
    #[test]
    fn a_grown_image_holds_old_and_new_data_and_stays_clean() {
        let dir = Dir::new("grow");
        let image = dir.path("d.qcow2");
        let path = image.to_str().unwrap();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            path,
            "1M",
        ]);
        let mut model = vec![0u8; (64 * MIB) as usize];
        {
            let disk = open(&image, &rw()).unwrap();
            write(&*disk, &mut model, 512 << 10, &pattern(1, 8192));
            disk.close().unwrap();
        }
        qemu_img(&["snapshot", "-c", "before", path]);
        let disk = open(&image, &rw()).unwrap();
        assert_eq!(disk.grow(64 * MIB).unwrap(), 64 * MIB);
        assert_eq!(disk.capacity(), 64 * MIB);
        write(&*disk, &mut model, 60 * MIB + 512, &pattern(2, 12288));
        assert_eq!(read(&*disk, 512 << 10, 8192), pattern(1, 8192));
        // growing within the L1 table's reach changes the size only
        assert_eq!(disk.grow(64 * MIB).unwrap(), 64 * MIB);
        let err = disk.grow(32 * MIB).unwrap_err().to_string();
        assert!(err.contains("shrinking it to"), "{err}");
        let err = disk.grow(64 * MIB + 100).unwrap_err().to_string();
        assert!(err.contains("multiple of 512"), "{err}");
        disk.close().unwrap();
        drop(disk);
        assert_clean_and_equal(&dir, &image, &model);
        let info = qemu_img(&["info", "--output=json", path]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["virtual-size"], 64 * MIB);
        let list = String::from_utf8(qemu_img(&["snapshot", "-l", path]).stdout).unwrap();
        assert!(list.contains("before"), "{list}");
        // applying the snapshot gives back the 1 MiB disk as it was
        qemu_img(&["snapshot", "-a", "before", path]);
        let back = open(&image, &rw()).unwrap();
        assert_eq!(back.capacity(), MIB);
        assert_eq!(read(&*back, 512 << 10, 8192), pattern(1, 8192));
    }
}
