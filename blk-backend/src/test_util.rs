//! Helpers for unit tests: guest memory, descriptors and request headers in it.

use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

use std::path::PathBuf;
use std::sync::Arc;

use crate::blk::BlkDevice;
use crate::disk::{raw::RawDisk, Format, OpenOptions};
use crate::request::Header;
use crate::stats::Stats;

pub const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
pub const MIB: u64 = 1 << 20;

/// 16 MiB of guest memory at 0.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap()
}

pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Write a request header at `at`.
pub fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
    let h = Header {
        kind: kind.into(),
        ioprio: 0.into(),
        sector: sector.into(),
    };
    mem.write_obj(h, GuestAddress(at)).unwrap();
}

/// A raw image file in the temporary directory, removed on drop.
pub struct TempImage(pub PathBuf);

impl TempImage {
    pub fn new(tag: &str, bytes: &[u8]) -> TempImage {
        let path = std::env::temp_dir().join(format!("sv-blk-{tag}-{}.img", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        TempImage(path)
    }
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A device serving `image` with the serial `SERIAL-42`.
pub fn device(image: &TempImage, readonly: bool) -> BlkDevice {
    let opts = OpenOptions {
        readonly,
        direct: false,
        format: Format::Raw,
        backing_dirs: Vec::new(),
    };
    device_on(Box::new(RawDisk::open(&image.0, &opts).unwrap()), readonly)
}

/// A writable device serving `image` opened as `format` says (`Auto`: probed).
pub fn device_as(image: &TempImage, format: Format) -> BlkDevice {
    let opts = OpenOptions {
        readonly: false,
        direct: false,
        format,
        backing_dirs: Vec::new(),
    };
    device_on(crate::disk::open(&image.0, &opts).unwrap(), false)
}

fn device_on(disk: Box<dyn crate::disk::Disk>, readonly: bool) -> BlkDevice {
    BlkDevice {
        disk: crate::blk::DiskSlot::new(disk),
        io_in_flight: Default::default(),
        readonly,
        serial: b"SERIAL-42".to_vec(),
        max_request_bytes: MIB,
        stats: Arc::new(Stats::default()),
    }
}
