//! Chains built with virtio-queue's mock split queue, including the ones a hostile guest can
//! send: out of order, looping, too long, outside guest memory.

use super::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::Bytes;

const NEXT: u16 = 1; // VRING_DESC_F_NEXT
const WRITE: u16 = 2; // VRING_DESC_F_WRITE
const MIB: u64 = 1 << 20;

/// 16 MiB of guest memory at 0, in two regions of 8 MiB.
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 8 * MIB as usize),
        (GuestAddress(8 * MIB), 8 * MIB as usize),
    ])
    .unwrap()
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// The chain of `descs` (NEXT flags and indexes filled in), walked with `order`.
fn walk(
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
    order: OutOfOrder,
) -> Result<ChainBuffers, ChainError> {
    let q = MockSplitQueue::new(mem, 16);
    ChainBuffers::new(q.build_desc_chain(descs).unwrap(), order)
}

/// The first chain of a descriptor table written as is (flags and next indexes untouched).
fn walk_table(mem: &GuestMemoryMmap, table: &[RawDescriptor]) -> Result<ChainBuffers, ChainError> {
    let q = MockSplitQueue::new(mem, 16);
    q.add_desc_chains(table, 0).unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    let chain = queue.iter(mem).unwrap().next().unwrap();
    ChainBuffers::new(chain, OutOfOrder::Refuse)
}

fn buf(addr: u64, len: u32, writable: bool) -> ChainBuffer {
    ChainBuffer {
        addr: GuestAddress(addr),
        len,
        writable,
    }
}

#[test]
fn a_chain_splits_into_its_readable_and_writable_parts() {
    let mem = memory();
    mem.write_slice(b"header..", GuestAddress(0x1000)).unwrap();
    mem.write_slice(b"data", GuestAddress(0x2000)).unwrap();
    let chain = walk(
        &mem,
        &[
            desc(0x1000, 8, 0),
            desc(0x2000, 4, 0),
            desc(0x3000, 512, WRITE),
            desc(0x4000, 1, WRITE),
        ],
        OutOfOrder::Refuse,
    )
    .unwrap();
    assert_eq!(
        chain.readable(),
        &[buf(0x1000, 8, false), buf(0x2000, 4, false)]
    );
    assert_eq!(
        chain.writable(),
        &[buf(0x3000, 512, true), buf(0x4000, 1, true)]
    );
    assert_eq!(chain.buffers().len(), 4);
    assert_eq!(chain.readable_len(), 12);
    assert_eq!(chain.read_readable(&mem, 64).unwrap(), b"header..data");
    assert_eq!(chain.readable_iovecs(&mem).unwrap().len(), 12);
    let out = chain.writable_iovecs(&mem).unwrap();
    assert_eq!(out.len(), 513);
    out.copy_from(&[0xab; 513]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 0xab);
    // a chain with one direction only has an empty other part
    let chain = walk(&mem, &[desc(0x3000, 16, WRITE)], OutOfOrder::Refuse).unwrap();
    assert!(chain.readable().is_empty());
    assert_eq!(chain.writable().len(), 1);
    assert_eq!(chain.read_readable(&mem, 0).unwrap(), Vec::<u8>::new());
}

#[test]
fn a_readable_buffer_after_a_writable_one_is_refused_ends_the_chain_or_is_kept() {
    let mem = memory();
    let descs = [
        desc(0x1000, 8, 0),
        desc(0x2000, 1, WRITE),
        desc(0x3000, 8, 0),
        desc(0x4000, 1, WRITE),
    ];
    assert_eq!(
        walk(&mem, &descs, OutOfOrder::Refuse),
        Err(ChainError::OutOfOrder)
    );
    let ended = walk(&mem, &descs, OutOfOrder::EndChain).unwrap();
    assert_eq!(
        ended.buffers(),
        &[buf(0x1000, 8, false), buf(0x2000, 1, true)]
    );
    assert_eq!(ended.writable(), &[buf(0x2000, 1, true)]);
    let kept = walk(&mem, &descs, OutOfOrder::Keep).unwrap();
    assert_eq!(kept.buffers().len(), 4, "all, in chain order");
    assert_eq!(kept.buffers()[2], buf(0x3000, 8, false));
    assert_eq!(kept.readable(), &[buf(0x1000, 8, false)]);
    assert_eq!(kept.writable(), &[buf(0x2000, 1, true)]);
    // the out-of-order part is never read, whatever it points at
    let descs = [
        desc(0x1000, 8, 0),
        desc(0x2000, 1, WRITE),
        desc(u64::MAX, 8, 0),
    ];
    let ended = walk(&mem, &descs, OutOfOrder::EndChain).unwrap();
    assert_eq!(ended.read_readable(&mem, 8).unwrap().len(), 8);
}

#[test]
fn one_direction_chains_refuse_the_other_direction() {
    let mem = memory();
    let q = MockSplitQueue::new(&mem, 16);
    let mixed = [desc(0x1000, 8, 0), desc(0x2000, 8, WRITE)];
    let chain = q.build_desc_chain(&mixed).unwrap();
    assert_eq!(
        ChainBuffers::readable_only(chain.clone()),
        Err(ChainError::UnexpectedWritable)
    );
    assert_eq!(
        ChainBuffers::writable_only(chain),
        Err(ChainError::UnexpectedReadable)
    );
    let chain = q
        .build_desc_chain(&[desc(0x1000, 8, 0), desc(0x2000, 8, 0)])
        .unwrap();
    assert_eq!(
        ChainBuffers::readable_only(chain).unwrap().readable().len(),
        2
    );
    let chain = q
        .build_desc_chain(&[desc(0x1000, 8, WRITE), desc(0x2000, 8, 0)])
        .unwrap();
    assert_eq!(
        ChainBuffers::writable_only(chain),
        Err(ChainError::OutOfOrder)
    );
}

#[test]
fn chains_that_loop_leave_the_table_or_overflow_their_length_are_refused() {
    let mem = memory();
    // lengths that add up past 4 GiB: virtio-queue stops after the first
    let huge = [desc(0x1000, u32::MAX, 0), desc(0x2000, 2, 0)];
    assert_eq!(
        walk(&mem, &huge, OutOfOrder::Refuse),
        Err(ChainError::CutShort)
    );
    // a loop: 0 -> 1 -> 0 -> ...
    let looping = [
        RawDescriptor::from(SplitDescriptor::new(0x1000, 8, NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(0x2000, 8, NEXT, 0)),
    ];
    assert_eq!(walk_table(&mem, &looping), Err(ChainError::CutShort));
    // a next index past the end of the table
    let away = [RawDescriptor::from(SplitDescriptor::new(
        0x1000, 8, NEXT, 1000,
    ))];
    assert_eq!(walk_table(&mem, &away), Err(ChainError::CutShort));
    // a well-formed table walks
    let fine = [
        RawDescriptor::from(SplitDescriptor::new(0x1000, 8, NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(0x2000, 8, WRITE, 0)),
    ];
    assert_eq!(walk_table(&mem, &fine).unwrap().buffers().len(), 2);
}

#[test]
fn buffers_outside_guest_memory_are_refused_by_every_view() {
    let mem = memory();
    let cases = [
        (64 * MIB, 16),     // past the end of memory
        (16 * MIB - 8, 16), // crossing the end of memory
        (u64::MAX - 7, 16), // wrapping around the address space
        (u64::MAX, 2),      // from the last address on
    ];
    for (addr, len) in cases {
        let outside = Err(ChainError::OutsideMemory { addr, len });
        let chain = walk(&mem, &[desc(addr, len, 0)], OutOfOrder::Refuse).unwrap();
        assert_eq!(chain.read_readable(&mem, 1 << 20).map(|_| ()), outside);
        assert_eq!(chain.readable_iovecs(&mem).map(|_| ()), outside);
        assert_eq!(chain.readable()[0].check(&mem), outside);
        let chain = walk(&mem, &[desc(addr, len, WRITE)], OutOfOrder::Refuse).unwrap();
        assert_eq!(chain.writable_iovecs(&mem).map(|_| ()), outside);
    }
    // one bad buffer fails the whole view
    let chain = walk(
        &mem,
        &[desc(0x1000, 8, WRITE), desc(64 * MIB, 8, WRITE)],
        OutOfOrder::Refuse,
    )
    .unwrap();
    assert!(chain.writable_iovecs(&mem).is_err());
    // an empty buffer names no byte: fine wherever it points
    assert_eq!(buf(u64::MAX, 0, false).check(&mem), Ok(()));
}

#[test]
fn a_buffer_across_two_memory_regions_is_one_iovec_per_region() {
    let mem = memory();
    let at = 8 * MIB - 100;
    mem.write_slice(&[7u8; 200], GuestAddress(at)).unwrap();
    let chain = walk(&mem, &[desc(at, 200, 0)], OutOfOrder::Refuse).unwrap();
    let iovecs = chain.readable_iovecs(&mem).unwrap();
    assert_eq!(iovecs.slices().len(), 2);
    assert_eq!(iovecs.len(), 200);
    assert_eq!(chain.read_readable(&mem, 200).unwrap(), vec![7u8; 200]);
}

#[test]
fn copying_out_stops_at_the_cap() {
    let mem = memory();
    let chain = walk(
        &mem,
        &[desc(0x1000, 100, 0), desc(0x2000, 28, 0)],
        OutOfOrder::Refuse,
    )
    .unwrap();
    assert_eq!(chain.read_readable(&mem, 128).unwrap().len(), 128);
    assert_eq!(
        chain.read_readable(&mem, 127),
        Err(ChainError::TooLarge { len: 128, cap: 127 })
    );
    // the cap is checked before any byte is read, even of buffers outside memory
    let chain = walk(&mem, &[desc(64 * MIB, 4096, 0)], OutOfOrder::Refuse).unwrap();
    assert!(matches!(
        chain.read_readable(&mem, 16),
        Err(ChainError::TooLarge { .. })
    ));
}

#[test]
fn buffers_split_with_checked_arithmetic() {
    let b = buf(0x1000, 16, true);
    assert_eq!(
        b.split_at(15),
        Some((buf(0x1000, 15, true), buf(0x100f, 1, true)))
    );
    assert_eq!(b.split_at(16), Some((b, buf(0x1010, 0, true))));
    assert_eq!(b.split_at(17), None);
    assert_eq!(buf(u64::MAX, 4, true).split_at(2), None);
}
