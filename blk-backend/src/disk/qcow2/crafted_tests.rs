//! Crafted images: headers and tables a hostile or damaged image may hold. Each case asserts
//! the exact outcome: refused at open naming the field, or the request fails with an I/O error
//! that says what is wrong and the image file is left byte for byte as it was, or the request
//! is served and `qemu-img check` agrees with the result.
//!
//! The base image (`qemu-img convert` of 1 MiB of data followed by 3 MiB of zeroes, 64 KiB
//! clusters, 16-bit refcounts) has this layout: header 0, refcount table 0x10000 (one
//! cluster), refcount block 0x20000, L1 table 0x30000 (one entry), L2 table 0x40000, data
//! 0x50000..0x150000 (guest clusters 0..16); guest clusters 16.. are unallocated.

use super::tables::COMPRESSED;
use super::tests::{pattern, qemu_img, rw, Dir};
use super::*;
use crate::disk::{open, OpenError};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const REFTABLE: u64 = 0x10000;
const REFBLOCK: u64 = 0x20000;
const L1: u64 = 0x30000;
const L2: u64 = 0x40000;
const DATA: u64 = 0x50000;
/// A guest offset whose cluster is unallocated (its L2 table exists).
const UNALLOCATED: u64 = 2 << 20;
/// The base image's file length (the end of its last data cluster).
const BASE_FILE_LEN: u64 = 0x15_0000;

/// The base image described above, in a fresh directory.
fn base_image(tag: &str) -> (Dir, PathBuf) {
    let dir = Dir::new(&format!("crafted-{tag}"));
    let raw = dir.path("src.raw");
    let mut bytes = pattern(1, 1 << 20);
    bytes.resize(4 << 20, 0);
    std::fs::write(&raw, &bytes).unwrap();
    let image = dir.path("c.qcow2");
    let (r, i) = (raw.to_str().unwrap(), image.to_str().unwrap());
    qemu_img(&["convert", "-O", "qcow2", r, i]);
    assert_eq!(
        peek64(&image, L1),
        COPIED | L2,
        "unexpected layout from qemu-img"
    );
    assert_eq!(
        peek64(&image, L2),
        COPIED | DATA,
        "unexpected layout from qemu-img"
    );
    assert_eq!(
        peek64(&image, REFTABLE),
        REFBLOCK,
        "unexpected layout from qemu-img"
    );
    assert_eq!(std::fs::metadata(&image).unwrap().len(), BASE_FILE_LEN);
    (dir, image)
}

/// An empty image (`qemu-img create`, 4 MiB): header, refcount table, refcount block and
/// L1 table in clusters 0..4, nothing else.
fn empty_image(tag: &str) -> (Dir, PathBuf) {
    let dir = Dir::new(&format!("crafted-{tag}"));
    let image = dir.path("e.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "4M"]);
    assert_eq!(
        peek64(&image, REFTABLE),
        REFBLOCK,
        "unexpected layout from qemu-img"
    );
    (dir, image)
}

fn poke(image: &Path, offset: u64, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

fn poke64(image: &Path, offset: u64, value: u64) {
    poke(image, offset, &value.to_be_bytes());
}

fn poke32(image: &Path, offset: u64, value: u32) {
    poke(image, offset, &value.to_be_bytes());
}

fn peek64(image: &Path, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    File::open(image)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    u64::from_be_bytes(b)
}

/// Opening fails; the error chain as one line.
fn open_error(image: &Path) -> String {
    match open(image, &rw()) {
        Ok(_) => panic!("the crafted image {image:?} was accepted"),
        Err(e) => backends::error_chain(&e),
    }
}

/// Opening fails naming header field `field` (and `words` in the message).
fn assert_bad_field(image: &Path, field: Field, words: &[&str]) {
    let msg = open_error(image);
    match open(image, &rw()) {
        Err(OpenError::Qcow2 {
            source: Qcow2Error::BadField { field: f, .. },
            ..
        }) => assert_eq!(f, field, "{msg}"),
        _ => panic!("expected the header field {field} refused, got: {msg}"),
    }
    assert_mentions(&msg, &[&field.to_string()]);
    assert_mentions(&msg, words);
}

/// The typed reason an I/O error carries.
fn layout_error(e: &io::Error) -> Option<&LayoutError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<LayoutError>())
}

fn assert_mentions(msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "expected {w:?} in: {msg}");
    }
}

fn try_read(disk: &dyn Disk, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    disk.read_at(&GuestIovecs::from_buf(&mut buf), offset)?;
    Ok(buf)
}

fn try_write(disk: &dyn Disk, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut buf = data.to_vec();
    disk.write_at(&GuestIovecs::from_buf(&mut buf), offset)
}

/// Run `f` on another thread; a hang past `secs` fails the test (the thread is left behind).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("no answer within {secs} s: the request hangs"))
}

/// `qemu-img check` finds no error (exit 0) or only leaked clusters (exit 3).
fn assert_checks_clean_or_leaks(image: &Path) {
    let out = qemu_img(&["check", image.to_str().unwrap()]);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(3)),
        "qemu-img check exit {code:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image opens, but reading and writing guest `offset` both fail with exactly
/// `expected`, and the image file is left exactly as it was.
fn assert_refused_untouched(image: &Path, offset: u64, expected: LayoutError) {
    let before = std::fs::read(image).unwrap();
    let disk = open(image, &rw()).unwrap();
    let read = try_read(&*disk, offset, 4096).map(|_| ());
    let write = try_write(&*disk, offset, &pattern(7, 4096));
    for (what, res) in [("read", read), ("write", write)] {
        let err = res.expect_err(&format!("the {what} succeeded"));
        assert_eq!(layout_error(&err), Some(&expected), "{what}: {err}");
    }
    disk.close().unwrap();
    drop(disk);
    let after = std::fs::read(image).unwrap();
    assert_eq!(before.len(), after.len(), "the image file changed size");
    if let Some(i) = (0..before.len()).find(|&i| before[i] != after[i]) {
        panic!("the image file changed at byte {i:#x}");
    }
}

// ---- header fields, refused at open ----

#[test]
fn a_v3_header_length_below_104_is_refused() {
    let (_dir, image) = empty_image("hdrlen");
    poke32(&image, 100, 96);
    assert_bad_field(&image, Field::HeaderLength, &["104"]);
}

#[test]
fn a_huge_l1_size_is_refused() {
    let (_dir, image) = empty_image("l1size");
    poke32(&image, 36, 0x1000_0000);
    assert_bad_field(&image, Field::L1Size, &[]);
}

#[test]
fn an_l1_table_overlapping_the_refcount_table_is_refused() {
    let (_dir, image) = empty_image("l1overlap");
    poke64(&image, 40, REFTABLE);
    assert_bad_field(&image, Field::L1TableOffset, &["refcount table"]);
}

#[test]
fn an_l1_table_past_the_end_of_the_file_is_refused() {
    let (_dir, image) = empty_image("l1eof");
    poke64(&image, 40, 0x100_0000);
    assert_bad_field(&image, Field::L1TableOffset, &["past the end"]);
}

#[test]
fn a_refcount_table_too_large_or_past_the_end_is_refused() {
    let (_dir, image) = empty_image("reftable");
    poke32(&image, 56, 0x10_0000);
    assert_bad_field(&image, Field::RefcountTableClusters, &[]);
    poke32(&image, 56, 1);
    poke64(&image, 48, 0x100_0000);
    assert_bad_field(&image, Field::RefcountTableOffset, &["past the end"]);
}

#[test]
fn a_refcount_order_above_6_is_refused() {
    let (_dir, image) = empty_image("reforder");
    poke32(&image, 96, 7);
    assert_bad_field(&image, Field::RefcountOrder, &[]);
}

#[test]
fn a_bad_snapshot_table_is_refused() {
    let (_dir, image) = empty_image("snaptable");
    poke32(&image, 60, 1);
    poke64(&image, 64, 0x100);
    assert_bad_field(&image, Field::SnapshotsOffset, &[]);
    poke32(&image, 60, 1_000_000);
    poke64(&image, 64, 0x10000);
    assert_bad_field(&image, Field::NbSnapshots, &[]);
}

#[test]
fn unknown_incompatible_features_are_refused() {
    let (_dir, image) = empty_image("incompat");
    poke64(&image, 72, 1 << 40);
    assert_mentions(&open_error(&image), &["incompatible features"]);
}

#[test]
fn a_backing_chain_loop_is_refused() {
    let (dir, image) = empty_image("loop");
    let name = image.file_name().unwrap().to_str().unwrap();
    let img = image.to_str().unwrap();
    qemu_img(&[
        "rebase", "-u", "-f", "qcow2", "-b", name, "-F", "qcow2", img,
    ]);
    assert_mentions(&open_error(&image), &["backing chain deeper than"]);
    drop(dir);
}

// ---- offsets read from the tables, checked at use ----

#[test]
fn an_l2_offset_of_zero_means_unallocated() {
    let (_dir, image) = base_image("l2zero");
    let header = std::fs::read(&image).unwrap()[..0x70].to_vec();
    poke64(&image, L1, COPIED);
    let disk = open(&image, &rw()).unwrap();
    assert_eq!(try_read(&*disk, 0, 4096).unwrap(), vec![0u8; 4096]);
    try_write(&*disk, 0, &pattern(3, 4096)).unwrap();
    assert_eq!(try_read(&*disk, 0, 4096).unwrap(), pattern(3, 4096));
    disk.close().unwrap();
    drop(disk);
    assert_eq!(std::fs::read(&image).unwrap()[..0x70], header[..]);
    assert_checks_clean_or_leaks(&image); // the old L2 table and its data leak
}

fn misaligned(area: Area, offset: u64) -> LayoutError {
    LayoutError::Misaligned { area, offset }
}

fn past_end(area: Area, offset: u64) -> LayoutError {
    let end = BASE_FILE_LEN;
    LayoutError::PastEnd { area, offset, end }
}

fn overlap(area: Area, offset: u64, other: Area) -> LayoutError {
    LayoutError::Overlap {
        area,
        offset,
        other,
    }
}

#[test]
fn a_misaligned_l2_offset_fails_the_request() {
    let (_dir, image) = base_image("l2misaligned");
    poke64(&image, L1, COPIED | (L2 + 0x200));
    assert_refused_untouched(&image, 0, misaligned(Area::L2Table, L2 + 0x200));
    poke64(&image, L1, COPIED | 0x200); // inside the header cluster
    assert_refused_untouched(&image, 0, misaligned(Area::L2Table, 0x200));
}

#[test]
fn an_l2_offset_past_the_end_fails_the_request() {
    let (_dir, image) = base_image("l2eof");
    poke64(&image, L1, COPIED | 0x1000_0000);
    assert_refused_untouched(&image, 0, past_end(Area::L2Table, 0x1000_0000));
}

#[test]
fn an_l2_table_on_other_metadata_fails_the_request() {
    let (_dir, image) = base_image("l2meta");
    for (at, other) in [
        (REFTABLE, Area::RefcountTable),
        (L1, Area::L1Table),
        (REFBLOCK, Area::RefcountBlock),
    ] {
        poke64(&image, L1, COPIED | at);
        assert_refused_untouched(&image, 0, overlap(Area::L2Table, at, other));
    }
}

#[test]
fn a_misaligned_data_offset_fails_the_request() {
    let (_dir, image) = base_image("datamisaligned");
    poke64(&image, L2, COPIED | (DATA + 0x200));
    assert_refused_untouched(&image, 0, misaligned(Area::DataCluster, DATA + 0x200));
}

#[test]
fn a_data_offset_past_the_end_fails_the_request() {
    let (_dir, image) = base_image("dataeof");
    poke64(&image, L2, COPIED | (1 << 40));
    assert_refused_untouched(&image, 0, past_end(Area::DataCluster, 1 << 40));
}

#[test]
fn a_data_cluster_on_metadata_fails_the_request() {
    let (_dir, image) = base_image("datameta");
    for (at, other) in [
        (REFBLOCK, Area::RefcountBlock),
        (L1, Area::L1Table),
        (L2, Area::L2Table),
    ] {
        poke64(&image, L2, COPIED | at);
        assert_refused_untouched(&image, 0, overlap(Area::DataCluster, at, other));
    }
    // guest cluster 1, shared (no COPIED flag): would be copied, then released
    poke64(&image, L2 + 8, REFTABLE);
    let expected = overlap(Area::DataCluster, REFTABLE, Area::RefcountTable);
    assert_refused_untouched(&image, 0x10000, expected);
}

#[test]
fn a_compressed_cluster_past_the_end_fails_the_request() {
    let (_dir, image) = base_image("compressedeof");
    poke64(&image, L2, COMPRESSED | (1 << 30));
    assert_refused_untouched(&image, 0, past_end(Area::CompressedCluster, 1 << 30));
}

#[test]
fn a_bad_refcount_block_offset_fails_the_allocating_write() {
    let (_dir, image) = base_image("refblock");
    for (entry, expected) in [
        (
            REFBLOCK + 0x1000,
            misaligned(Area::RefcountBlock, REFBLOCK + 0x1000),
        ),
        (0x1000_0000, past_end(Area::RefcountBlock, 0x1000_0000)),
        (L1, overlap(Area::RefcountBlock, L1, Area::L1Table)),
        // the L2 table in use is then also a refcount block: its lookup fails first
        (L2, overlap(Area::L2Table, L2, Area::RefcountBlock)),
    ] {
        poke64(&image, REFTABLE, entry);
        let before = std::fs::read(&image).unwrap();
        let disk = open(&image, &rw()).unwrap();
        let err = try_write(&*disk, UNALLOCATED, &pattern(2, 4096)).expect_err("write succeeded");
        assert_eq!(layout_error(&err), Some(&expected), "{err}");
        disk.close().unwrap();
        drop(disk);
        assert!(std::fs::read(&image).unwrap() == before, "image changed");
    }
}

// ---- refcount allocation ----

#[test]
fn a_refcount_table_of_full_blocks_fails_the_write_without_hanging() {
    let (_dir, image) = base_image("fulltable");
    // every refcount: 1; every one of 1 Mi table entries (a new 8 MiB table at the end of
    // the file) points at that one block, so no cluster of the 2^35 covered is free
    let table_at = 0x20_0000u64;
    poke(&image, REFBLOCK, &[0, 1].repeat(0x8000));
    poke(&image, table_at, &REFBLOCK.to_be_bytes().repeat(1 << 20));
    poke64(&image, 48, table_at);
    poke32(&image, 56, 128);
    let before = std::fs::read(&image).unwrap();
    let disk = open(&image, &rw()).unwrap();
    let started = Instant::now();
    let (disk, res) = within(20, move || {
        let r = try_write(&*disk, UNALLOCATED, &pattern(2, 4096));
        (disk, r)
    });
    let err = res.expect_err("a write with no free cluster succeeded");
    assert!(
        matches!(layout_error(&err), Some(LayoutError::NoFreeCluster { .. })),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    disk.close().unwrap();
    drop(disk);
    assert!(std::fs::read(&image).unwrap() == before, "image changed");
}

#[test]
fn a_missing_first_refcount_block_is_never_placed_on_the_header() {
    let (_dir, image) = empty_image("newblock");
    let header = std::fs::read(&image).unwrap()[..0x70].to_vec();
    poke64(&image, REFTABLE, 0);
    let disk = open(&image, &rw()).unwrap();
    let data = pattern(5, 0x20000);
    within(20, {
        let data = data.clone();
        move || {
            try_write(&*disk, 0x10000, &data).unwrap();
            assert_eq!(try_read(&*disk, 0x10000, data.len()).unwrap(), data);
            disk.close().unwrap();
        }
    });
    assert_eq!(std::fs::read(&image).unwrap()[..0x70], header[..]);
    let disk = open(&image, &rw()).unwrap();
    assert_eq!(try_read(&*disk, 0x10000, data.len()).unwrap(), data);
    drop(disk);
    assert_checks_clean_or_leaks(&image);
}

#[test]
fn metadata_with_refcount_zero_is_never_allocated() {
    let (_dir, image) = empty_image("metafree");
    poke(&image, REFBLOCK + 3 * 2, &[0, 0]); // the L1 table's cluster "free"
    let disk = open(&image, &rw()).unwrap();
    let data = pattern(6, 0x10000);
    try_write(&*disk, 0, &data).unwrap();
    assert_eq!(try_read(&*disk, 0, data.len()).unwrap(), data);
    disk.close().unwrap();
    drop(disk);
    let disk = open(&image, &rw()).unwrap();
    assert_eq!(try_read(&*disk, 0, data.len()).unwrap(), data);
    drop(disk);
    assert_checks_clean_or_leaks(&image);
}

#[test]
fn an_image_with_an_internal_snapshot_is_served_and_stays_clean() {
    let (_dir, image) = base_image("snapshot");
    qemu_img(&["snapshot", "-c", "s1", image.to_str().unwrap()]);
    let disk = open(&image, &rw()).unwrap();
    try_write(&*disk, 4096, &pattern(8, 8192)).unwrap();
    try_write(&*disk, UNALLOCATED, &pattern(9, 4096)).unwrap();
    let mut expect = pattern(1, 1 << 20);
    expect[4096..12288].copy_from_slice(&pattern(8, 8192));
    assert_eq!(try_read(&*disk, 0, 1 << 20).unwrap(), expect);
    disk.close().unwrap();
    drop(disk);
    assert_checks_clean_or_leaks(&image);
    let out = qemu_img(&["check", image.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
