//! The seeds' tests: every seed runs; the valid images pass `qemu-img check` and hold what is
//! written through a reopen; reads see data, compressed clusters and the backing file; the
//! crafted images are refused or fail their requests.

use super::*;
use backends::fuzz_harness::test_inputs::{check_seeds, seed_named};
use std::time::Duration;

fn seed(name: &str) -> Vec<u8> {
    seed_named(qcow2_image_seeds(), &format!("qcow2-{name}"))
}

#[test]
fn valid_seed_images_pass_qemu_img_check() {
    let dir = ScratchDir::new("qcow2-check").unwrap();
    std::fs::write(dir.0.join(BACKING_NAME), pattern(BACKING_SEED, BACKING_LEN)).unwrap();
    for (name, image, _) in images().into_iter().filter(|(_, _, valid)| *valid) {
        let path = dir.0.join(IMAGE_NAME);
        std::fs::write(&path, image).unwrap();
        let out = std::process::Command::new("qemu-img")
            .args(["check", path.to_str().unwrap()])
            .output()
            .expect("qemu-img is needed by the qcow2 tests (scripts/install-deps.sh)");
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_seed_runs_and_names_are_file_names() {
    // each seed runs; no time budget here
    check_seeds(&qcow2_image_seeds(), |b| _ = run(b), Duration::MAX);
}

#[test]
fn valid_images_hold_what_is_written_through_a_reopen() {
    for (name, _, _) in images().into_iter().filter(|(_, _, v)| *v) {
        let r = run(&seed(name));
        assert!(r.opened, "{name}: {r:?}");
        if r.capacity == 0 {
            assert_eq!(r.ops_failed, 0, "{name}");
            continue;
        }
        assert_eq!(r.ops_failed, 0, "{name}: {r:?}");
        assert_eq!(r.readback, Some(true), "{name}");
        assert_eq!(r.reopen_readback, Some(true), "{name}");
        assert_eq!(r.zeroes_readback, Some(true), "{name}");
    }
    let r = run(&seed("v3-c4k-1g-far"));
    assert_eq!((r.ops_failed, r.reopen_readback), (0, Some(true)), "{r:?}");
}

#[test]
fn reads_see_data_compressed_clusters_and_the_backing_file() {
    // sector 24 of 16: the c512 data image's clusters 24..40 are unallocated
    let r = run(&seed("v3-c512-backing-raw"));
    let backing = pattern(BACKING_SEED, BACKING_LEN);
    assert_eq!(r.first_read.as_deref(), Some(&backing[24 * 512..40 * 512]));
    let mut control = [0u8; CONTROL_LEN];
    control[5] = 7; // 8 sectors from 0: six data clusters, compressed, zero
    let (_, image, _) = images()
        .into_iter()
        .find(|(n, _, _)| *n == "v3-c512-compressed-and-zero")
        .unwrap();
    let r = run(&[image, control.to_vec()].concat());
    let mut expected = pattern(0x11, 6 * 512);
    expected.extend_from_slice(&[0xc5; 512]);
    expected.extend_from_slice(&[0; 512]);
    assert_eq!(r.first_read, Some(expected));
}

#[test]
fn crafted_images_are_refused_or_fail_their_requests() {
    for name in [
        "header-length-96",
        "l1-size-huge",
        "l1-overlaps-reftable",
        "refcount-order-7",
        "backing-loop",
        "backing-absolute-path",
        "backing-parent-path",
        "backing-dot-dot",
        "snapshots-too-many",
        "empty",
    ] {
        assert!(!run(&seed(name)).opened, "{name} was opened");
    }
    for name in [
        "l2-misaligned",
        "l2-past-eof",
        "l2-on-reftable",
        "data-misaligned",
        "data-on-l1",
        "data-past-eof",
        "compressed-past-eof",
        "refcount-table-full",
    ] {
        let r = run(&seed(name));
        assert!(r.opened, "{name}: {r:?}");
        assert!(r.ops_failed > 0, "{name}: {r:?}");
        assert_ne!(r.readback, Some(true), "{name}: {r:?}");
    }
    let r = run(&seed("v2-c512-backing-probed"));
    let why = r.refused.unwrap_or_default();
    assert!(
        why.contains("names no format for the backing file"),
        "{why}"
    );
    let r = run(&seed("refblock-missing"));
    assert_eq!((r.ops_failed, r.readback), (0, Some(true)), "{r:?}");
    let r = run(&seed("not-qcow2-probed-raw"));
    assert_eq!((r.opened, r.readback), (true, Some(true)), "{r:?}");
    let r = run(&seed("v3-c512-data-read-only"));
    assert_eq!((r.ops_failed, r.readback), (0, None), "{r:?}");
}
