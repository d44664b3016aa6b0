//! Helpers for unit tests: guest memory, descriptors and request headers in it.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::request::Header;

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
