//! virtio-blk wire format: feature bits, request types and status codes (from
//! virtio-bindings), the request header, and the device configuration space.

pub use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Sectors are always 512 bytes on the wire, whatever the advertised block size.
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

/// Size of `struct virtio_blk_outhdr` (type, reserved/ioprio, sector).
pub const HEADER_SIZE: u32 = 16;

/// Size of `struct virtio_blk_discard_write_zeroes` (sector, num_sectors, flags).
pub const SEGMENT_SIZE: u32 = 16;

/// The `flags` bit of a write-zeroes segment that allows deallocating the range.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// The parts of `struct virtio_blk_config` we fill in (the rest reads as zero).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

/// `sizeof(struct virtio_blk_config)` up to the write-zeroes fields (Linux 6.1 reads no more).
pub const CONFIG_SIZE: usize = 60;

impl BlkConfig {
    /// The config space as the guest reads it (little endian, spec layout).
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0u8; CONFIG_SIZE];
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &self.capacity.to_le_bytes());
        put(8, &self.size_max.to_le_bytes());
        put(12, &self.seg_max.to_le_bytes());
        // 16..20: geometry (not offered)
        put(20, &self.blk_size.to_le_bytes());
        put(24, &[self.physical_block_exp, 0]);
        put(26, &self.min_io_size.to_le_bytes());
        put(28, &self.opt_io_size.to_le_bytes());
        // 32: writeback, 33: unused
        put(34, &self.num_queues.to_le_bytes());
        put(36, &self.max_discard_sectors.to_le_bytes());
        put(40, &self.max_discard_seg.to_le_bytes());
        put(44, &self.discard_sector_alignment.to_le_bytes());
        put(48, &self.max_write_zeroes_sectors.to_le_bytes());
        put(52, &self.max_write_zeroes_seg.to_le_bytes());
        put(56, &[self.write_zeroes_may_unmap]);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_sit_at_the_spec_offsets() {
        let c = BlkConfig {
            capacity: 0x0102_0304_0506_0708,
            seg_max: 126,
            blk_size: 512,
            num_queues: 4,
            max_write_zeroes_seg: 1,
            write_zeroes_may_unmap: 1,
            ..Default::default()
        };
        let b = c.to_bytes();
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[12..16], &126u32.to_le_bytes());
        assert_eq!(&b[20..24], &512u32.to_le_bytes());
        assert_eq!(&b[34..36], &4u16.to_le_bytes());
        assert_eq!(&b[52..56], &1u32.to_le_bytes());
        assert_eq!(b[56], 1);
        // reads past the end are zero, never a panic (more in backends::config_space)
        let read = |offset, size| backends::config_space::read(&b, offset, size);
        assert_eq!(
            read(56, 16),
            vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(read(200, 4), vec![0; 4]);
        assert_eq!(read(34, 2), vec![4, 0]);
    }
}
