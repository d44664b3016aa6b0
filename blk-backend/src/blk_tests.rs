//! The device end to end on a real image file, with chains from virtio-queue's mock queue:
//! data round trips, read-only refusal, serials, discard and write-zeroes, hostile chains.

use super::*;
use crate::disk::Format;
use crate::test_util::{desc, device, device_as, header, memory, TempImage, MIB, WRITE};
use std::sync::atomic::Ordering::Relaxed;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;

const STATUS: u64 = 0x40_0000;

/// Run one chain through the device; returns (used length, status byte).
fn run(dev: &BlkDevice, mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (u32, u8) {
    let q = MockSplitQueue::new(mem, 16);
    let chain = q.build_desc_chain(descs).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let used = dev.process(chain, mem);
    (used, mem.read_obj(GuestAddress(STATUS)).unwrap())
}

fn segment(mem: &GuestMemoryMmap, at: u64, sector: u64, sectors: u32, flags: u32) {
    let s = Segment {
        sector: sector.into(),
        num_sectors: sectors.into(),
        flags: flags.into(),
    };
    mem.write_obj(s, GuestAddress(at)).unwrap();
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn a_write_is_read_back_and_lands_in_the_file() {
    let img = TempImage::new("rw", &vec![0u8; MIB as usize]);
    let dev = device(&img, false);
    let mem = memory();
    mem.write_slice(&[0xabu8; 4096], GuestAddress(0x20_0000))
        .unwrap();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, 8);
    let w = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 4096, 0),
        desc(STATUS, 1, WRITE),
    ];
    assert_eq!(run(&dev, &mem, &w), (1, OK));
    header(&mem, 0x10_0000, VIRTIO_BLK_T_IN, 8);
    let r = [
        desc(0x10_0000, 16, 0),
        desc(0x30_0000, 1024, WRITE),
        desc(0x31_0000, 3072, WRITE),
        desc(STATUS, 1, WRITE),
    ];
    assert_eq!(run(&dev, &mem, &r), (4097, OK));
    let mut back = [0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(0x30_0000)).unwrap();
    assert_eq!(back, [0xab; 1024]);
    let file = img.bytes();
    assert!(file[4096..8192].iter().all(|b| *b == 0xab));
    assert!(file[..4096].iter().all(|b| *b == 0));
    assert_eq!(dev.stats.bytes_written.load(Relaxed), 4096);
    assert_eq!(dev.stats.bytes_read.load(Relaxed), 4096);
}

#[test]
fn a_read_only_disk_is_never_written() {
    let img = TempImage::new("ro", &vec![7u8; MIB as usize]);
    let dev = device(&img, true);
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, 0);
    let w = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 4096, 0),
        desc(STATUS, 1, WRITE),
    ];
    assert_eq!(run(&dev, &mem, &w), (1, IOERR));
    header(&mem, 0x10_0000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&mem, 0x20_0000, 0, 8, 0);
    let z = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 16, 0),
        desc(STATUS, 1, WRITE),
    ];
    assert_eq!(run(&dev, &mem, &z), (1, IOERR));
    header(&mem, 0x10_0000, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(run(&dev, &mem, &z), (1, IOERR));
    assert!(img.bytes().iter().all(|b| *b == 7));
    assert_eq!(dev.stats.readonly_refused.load(Relaxed), 3);
}

#[test]
fn get_id_returns_the_serial() {
    let img = TempImage::new("id", &vec![0u8; MIB as usize]);
    let dev = device(&img, false);
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_GET_ID, 0);
    let c = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 20, WRITE),
        desc(STATUS, 1, WRITE),
    ];
    assert_eq!(run(&dev, &mem, &c), (21, OK));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&id[..9], b"SERIAL-42");
    assert!(id[9..].iter().all(|b| *b == 0));
}

#[test]
fn write_zeroes_and_discard_zero_the_range_and_check_it() {
    let img = TempImage::new("wz", &vec![9u8; MIB as usize]);
    let dev = device(&img, false);
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&mem, 0x20_0000, 1, 2, 0);
    let c = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 16, 0),
        desc(STATUS, 1, WRITE),
    ];
    assert_eq!(run(&dev, &mem, &c), (1, OK));
    header(&mem, 0x10_0000, VIRTIO_BLK_T_DISCARD, 0);
    segment(&mem, 0x20_0000, 16, 8, 0);
    assert_eq!(run(&dev, &mem, &c), (1, OK));
    let file = img.bytes();
    assert!(file[..512].iter().all(|b| *b == 9));
    assert!(file[512..1536].iter().all(|b| *b == 0));
    assert!(file[1536..8192].iter().all(|b| *b == 9));
    assert!(file[8192..12288].iter().all(|b| *b == 0));
    // a discard with flags, a range past the end, a ragged segment list
    segment(&mem, 0x20_0000, 0, 8, 1);
    assert_eq!(run(&dev, &mem, &c), (1, UNSUPP));
    segment(&mem, 0x20_0000, MIB / 512 - 1, 2, 0);
    assert_eq!(run(&dev, &mem, &c), (1, IOERR));
    let ragged = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 12, 0),
        desc(STATUS, 1, WRITE),
    ];
    assert_eq!(run(&dev, &mem, &ragged), (1, IOERR));
    assert_eq!(img.bytes().len(), MIB as usize);
}

#[test]
fn hostile_chains_get_an_error_or_nothing_and_are_counted() {
    let img = TempImage::new("bad", &vec![0u8; MIB as usize]);
    let dev = device(&img, false);
    let mem = memory();
    // no status descriptor: nothing to answer with
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, 0);
    let c = [desc(0x10_0000, 16, 0), desc(0x20_0000, 512, 0)];
    assert_eq!(run(&dev, &mem, &c).0, 0);
    // a write past the end
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, MIB / 512);
    let c = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, 0),
        desc(STATUS, 1, WRITE),
    ];
    assert_eq!(run(&dev, &mem, &c), (1, IOERR));
    // an unknown type
    header(&mem, 0x10_0000, 77, 0);
    assert_eq!(run(&dev, &mem, &c), (1, UNSUPP));
    assert_eq!(dev.stats.bad_requests.load(Relaxed), 2);
    assert_eq!(dev.stats.unsupported.load(Relaxed), 1);
    assert_eq!(img.bytes(), vec![0u8; MIB as usize]);
}

#[test]
fn a_grown_image_is_taken_on_resize_and_bounds_the_requests() {
    let img = TempImage::new("grow", &vec![0u8; MIB as usize]);
    let dev = device(&img, false);
    let mem = memory();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, MIB / 512);
    let c = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, 0),
        desc(STATUS, 1, WRITE),
    ];
    assert_eq!(
        run(&dev, &mem, &c),
        (1, IOERR),
        "past the end before the resize"
    );
    assert_eq!(dev.resize().unwrap(), None);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap()
        .set_len(2 * MIB)
        .unwrap();
    assert_eq!(dev.resize().unwrap(), Some((MIB, 2 * MIB)));
    assert_eq!(dev.limits().capacity_bytes, 2 * MIB);
    assert_eq!(run(&dev, &mem, &c), (1, OK), "inside the grown disk");
}

#[test]
fn a_probed_raw_disk_refuses_a_first_sector_that_probes_as_qcow2() {
    let img = TempImage::new("probe", &vec![0u8; MIB as usize]);
    let dev = device_as(&img, Format::Auto);
    let mem = memory();
    let mut sector0 = [0x55u8; 8192];
    sector0[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
    mem.write_slice(&sector0, GuestAddress(0x20_0000)).unwrap();
    // two guest buffers over the first block (copied and checked) and the next one
    let w = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 300, 0),
        desc(0x20_0000 + 300, 8192 - 300, 0),
        desc(STATUS, 1, WRITE),
    ];
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, 0);
    let q = MockSplitQueue::new(&mem, 16);
    let started = dev.start(q.build_desc_chain(&w).unwrap(), &mem);
    assert!(
        matches!(started, Start::Done(_)),
        "a write over the magic is checked by the disk, not sent to io_uring"
    );
    assert_eq!(run(&dev, &mem, &w), (1, IOERR));
    assert_eq!(img.bytes(), vec![0u8; MIB as usize], "nothing was written");

    // any other first sector is written whole, and writes elsewhere go to the file directly
    sector0[..8].copy_from_slice(b"\xebc\x90MBR!!");
    mem.write_slice(&sector0, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(run(&dev, &mem, &w), (1, OK));
    assert_eq!(img.bytes()[..8192], sector0);
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, 8);
    let q = MockSplitQueue::new(&mem, 16);
    assert!(matches!(
        dev.start(q.build_desc_chain(&w).unwrap(), &mem),
        Start::Io(_)
    ));

    // with the format given, the guest's disk is its own
    let dev = device_as(&img, Format::Raw);
    sector0[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
    mem.write_slice(&sector0, GuestAddress(0x20_0000)).unwrap();
    header(&mem, 0x10_0000, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(run(&dev, &mem, &w), (1, OK));
    assert_eq!(img.bytes()[..4], *b"QFI\xfb");
}
