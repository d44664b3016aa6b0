//! Request parsing against chains built with virtio-queue's mock split queue, including the
//! malformed ones a hostile guest can send.

use super::*;
use crate::test_util::{desc, header, memory, MIB, WRITE};
use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;

fn limits() -> Limits {
    Limits {
        capacity_bytes: 8 * MIB,
        max_request_bytes: MIB,
    }
}

fn parse_chain(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, BadRequest> {
    let q = MockSplitQueue::new(mem, 16);
    let chain = q.build_desc_chain(descs).unwrap();
    parse(chain, &limits())
}

#[test]
fn a_read_of_two_buffers_is_parsed() {
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_IN, 8);
    let req = parse_chain(
        &mem,
        &[
            desc(0x10_0000, 16, 0),
            desc(0x20_0000, 4096, WRITE),
            desc(0x30_0000, 512, WRITE),
            desc(0x40_0000, 1, WRITE),
        ],
    )
    .unwrap();
    assert_eq!(req.kind, RequestKind::In);
    assert_eq!(req.offset(), 8 * 512);
    assert_eq!(req.data_len, 4608);
    assert_eq!(req.data.len(), 2);
    assert_eq!(req.status, GuestAddress(0x40_0000));
}

#[test]
fn flush_and_unknown_types_parse_without_data() {
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_FLUSH, 0);
    let req = parse_chain(&mem, &[desc(0x10_0000, 16, 0), desc(0x40_0000, 1, WRITE)]).unwrap();
    assert_eq!(req.kind, RequestKind::Flush);
    header(&mem, 0x10_0000, 99, 0);
    let req = parse_chain(&mem, &[desc(0x10_0000, 16, 0), desc(0x40_0000, 1, WRITE)]).unwrap();
    assert_eq!(req.kind, RequestKind::Unsupported(99));
}

#[test]
fn a_chain_without_a_writable_status_is_refused_without_a_status() {
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, 0);
    let err = parse_chain(&mem, &[desc(0x10_0000, 16, 0), desc(0x20_0000, 512, 0)]).unwrap_err();
    assert_eq!(err.status, None);
    assert_eq!(err.reason, BadReason::NoStatus);
    // a lone descriptor is no request either
    let err = parse_chain(&mem, &[desc(0x40_0000, 1, WRITE)]).unwrap_err();
    assert_eq!(err.reason, BadReason::NoStatus);
}

#[test]
fn a_status_outside_memory_is_refused() {
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_IN, 0);
    let err = parse_chain(&mem, &[desc(0x10_0000, 16, 0), desc(64 * MIB, 1, WRITE)]).unwrap_err();
    assert_eq!(err.status, None);
    assert!(matches!(err.reason, BadReason::OutsideMemory { .. }));
}

#[test]
fn malformed_headers_are_reported_at_the_status_byte() {
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_IN, 0);
    for head in [
        desc(0x10_0000, 8, 0),
        desc(0x10_0000, 16, WRITE),
        desc(0x10_0000, 4096, 0),
    ] {
        let err = parse_chain(&mem, &[head, desc(0x40_0000, 1, WRITE)]).unwrap_err();
        assert_eq!(err.status, Some(GuestAddress(0x40_0000)));
        assert_eq!(err.reason, BadReason::BadHeader);
    }
}

#[test]
fn data_in_the_wrong_direction_is_refused() {
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_IN, 0);
    let err = parse_chain(
        &mem,
        &[
            desc(0x10_0000, 16, 0),
            desc(0x20_0000, 512, 0),
            desc(0x40_0000, 1, WRITE),
        ],
    )
    .unwrap_err();
    assert_eq!(err.reason, BadReason::WrongDirection(VIRTIO_BLK_T_IN));
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, 0);
    let err = parse_chain(
        &mem,
        &[
            desc(0x10_0000, 16, 0),
            desc(0x20_0000, 512, WRITE),
            desc(0x40_0000, 1, WRITE),
        ],
    )
    .unwrap_err();
    assert_eq!(err.reason, BadReason::WrongDirection(VIRTIO_BLK_T_OUT));
}

#[test]
fn partial_sectors_and_ranges_past_the_end_are_refused() {
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, 0);
    let err = parse_chain(
        &mem,
        &[
            desc(0x10_0000, 16, 0),
            desc(0x20_0000, 100, 0),
            desc(0x40_0000, 1, WRITE),
        ],
    )
    .unwrap_err();
    assert_eq!(err.reason, BadReason::NotSectorMultiple(100));
    // last sector + one more
    let last = 8 * MIB / 512 - 1;
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, last);
    let chain = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 1024, 0),
        desc(0x40_0000, 1, WRITE),
    ];
    let err = parse_chain(&mem, &chain).unwrap_err();
    assert!(matches!(err.reason, BadReason::BeyondEnd { .. }));
    // a sector number whose byte offset overflows u64
    header(&mem, 0x10_0000, VIRTIO_BLK_T_IN, u64::MAX / 2);
    let chain = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, WRITE),
        desc(0x40_0000, 1, WRITE),
    ];
    let err = parse_chain(&mem, &chain).unwrap_err();
    assert!(matches!(err.reason, BadReason::BeyondEnd { .. }));
    // exactly the last sector is fine
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, last);
    let chain = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, 0),
        desc(0x40_0000, 1, WRITE),
    ];
    assert!(parse_chain(&mem, &chain).is_ok());
}

#[test]
fn data_outside_guest_memory_and_oversized_requests_are_refused() {
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_IN, 0);
    let chain = [
        desc(0x10_0000, 16, 0),
        desc(16 * MIB - 512, 1024, WRITE),
        desc(0x40_0000, 1, WRITE),
    ];
    let err = parse_chain(&mem, &chain).unwrap_err();
    assert!(matches!(err.reason, BadReason::OutsideMemory { .. }));
    let chain = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, MIB as u32, WRITE),
        desc(0x50_0000, 512, WRITE),
        desc(0x40_0000, 1, WRITE),
    ];
    let err = parse_chain(&mem, &chain).unwrap_err();
    assert!(matches!(err.reason, BadReason::TooLarge(..)));
}

#[test]
fn a_chain_cut_short_is_refused_without_a_status() {
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_IN, 0);
    // more than 4 GiB in all: virtio-queue stops before the data, and what is left of the
    // chain has no status byte that can be trusted
    let chain = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, u32::MAX, WRITE),
        desc(0x40_0000, 1, WRITE),
    ];
    let err = parse_chain(&mem, &chain).unwrap_err();
    assert_eq!(err.status, None);
    assert_eq!(err.reason, BadReason::Chain(ChainError::CutShort));
}

#[test]
fn a_readable_buffer_after_a_writable_one_is_judged_by_the_request_type() {
    let mem = memory();
    let chain = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, WRITE),
        desc(0x30_0000, 512, 0),
        desc(0x40_0000, 1, WRITE),
    ];
    // a flush takes data buffers in either direction (and ignores them)
    header(&mem, 0x10_0000, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(parse_chain(&mem, &chain).unwrap().kind, RequestKind::Flush);
    // a read wants every data buffer device-writable
    header(&mem, 0x10_0000, VIRTIO_BLK_T_IN, 0);
    let err = parse_chain(&mem, &chain).unwrap_err();
    assert_eq!(err.status, Some(GuestAddress(0x40_0000)));
    assert_eq!(err.reason, BadReason::WrongDirection(VIRTIO_BLK_T_IN));
}
