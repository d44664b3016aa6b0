//! Internal snapshots against `qemu-img snapshot`: ours are listed and applied by qemu-img,
//! qemu-img's by us, and `qemu-img check` finds no error and no leak after every step.

use super::*;
use crate::disk::qcow2::tests::{assert_clean, converted, pattern, qemu_img, rw, Dir};
use crate::disk::{Disk, GuestIovecs, OpenOptions};
use std::fs::OpenOptions as FileOptions;
use std::path::Path;

fn open_rw(image: &Path) -> Qcow2Disk {
    let file = FileOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    Qcow2Disk::open(file, image, &rw(), 0).unwrap()
}

fn write(disk: &dyn Disk, model: &mut [u8], offset: u64, data: &[u8]) {
    let mut buf = data.to_vec();
    disk.write_at(&GuestIovecs::from_buf(&mut buf), offset)
        .unwrap();
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

fn content(disk: &dyn Disk) -> Vec<u8> {
    let mut buf = vec![0u8; disk.capacity() as usize];
    disk.read_at(&GuestIovecs::from_buf(&mut buf), 0).unwrap();
    buf
}

fn listed(image: &Path) -> String {
    let out = qemu_img(&["snapshot", "-l", image.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn new_image(dir: &Dir, cluster: u64) -> std::path::PathBuf {
    let image = dir.path("disk.qcow2");
    let opt = format!("cluster_size={cluster}");
    let size = (256 * cluster).to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &opt,
        image.to_str().unwrap(),
        &size,
    ]);
    image
}

/// Writes that touch shared and unshared clusters, several L2 ranges, and zeroes.
fn diverge(disk: &dyn Disk, model: &mut [u8], cluster: u64, seed: u8) {
    write(disk, model, 512, &pattern(seed, 2048));
    write(
        disk,
        model,
        3 * cluster,
        &pattern(seed + 1, 2 * cluster as usize),
    );
    write(disk, model, 200 * cluster + 4096, &pattern(seed + 2, 512));
    disk.write_zeroes(4 * cluster, cluster, true).unwrap();
    model[4 * cluster as usize..5 * cluster as usize].fill(0);
}

fn ours_listed_and_applied_by_qemu_img(cluster: u64) {
    let dir = Dir::new(&format!("snap-ours-{cluster}"));
    let image = new_image(&dir, cluster);
    let mut model = vec![0u8; 256 * cluster as usize];
    let disk = open_rw(&image);
    diverge(&disk, &mut model, cluster, 10);
    let at_s1 = model.clone();
    let made = disk.create_snapshot("s1").unwrap();
    assert_eq!((made.id.as_str(), made.disk_size), ("1", 256 * cluster));
    diverge(&disk, &mut model, cluster, 40);
    assert_eq!(content(&disk), model, "the active disk after the snapshot");
    disk.create_snapshot("second one").unwrap();
    let names: Vec<_> = disk
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1", "second one"]);
    disk.close().unwrap();
    drop(disk);
    assert_clean(&image);
    let list = listed(&image);
    assert!(list.contains("s1") && list.contains("second one"), "{list}");
    assert_eq!(converted(&dir, &image), model);
    qemu_img(&["snapshot", "-a", "s1", image.to_str().unwrap()]);
    assert_clean(&image);
    assert_eq!(converted(&dir, &image), at_s1, "qemu-img applied our s1");
}

#[test]
fn our_snapshots_are_listed_and_applied_by_qemu_img() {
    ours_listed_and_applied_by_qemu_img(65536);
}

#[test]
fn with_512_byte_clusters_tables_span_several_clusters() {
    // 256 clusters of 512 bytes: an L1 table of 4 entries, L2 tables of 64 entries; a
    // dozen snapshots make a table longer than a cluster
    let cluster = 512;
    let dir = Dir::new("snap-small");
    let image = new_image(&dir, cluster);
    let mut model = vec![0u8; 256 * cluster as usize];
    let mut states = Vec::new();
    {
        let disk = open_rw(&image);
        for i in 0..12u8 {
            diverge(&disk, &mut model, cluster, i * 3);
            disk.create_snapshot(&format!("snapshot number {i}"))
                .unwrap();
            states.push(model.clone());
        }
        disk.close().unwrap();
    }
    assert_clean(&image);
    ours_listed_and_applied_by_qemu_img(cluster);
    let mut disk = open_rw(&image);
    disk.apply_snapshot("snapshot number 5").unwrap();
    assert_eq!(content(&disk), states[5]);
    disk.delete_snapshot("snapshot number 0").unwrap();
    disk.close().unwrap();
    drop(disk);
    assert_clean(&image);
}

#[test]
fn qemu_img_snapshots_are_applied_and_deleted_by_us() {
    let cluster = 65536;
    let dir = Dir::new("snap-theirs");
    let image = new_image(&dir, cluster);
    let mut model = vec![0u8; 256 * cluster as usize];
    {
        let disk = open_rw(&image);
        diverge(&disk, &mut model, cluster, 1);
        disk.close().unwrap();
    }
    let at_q1 = model.clone();
    qemu_img(&["snapshot", "-c", "q1", image.to_str().unwrap()]);
    let mut disk = open_rw(&image);
    let list = disk.snapshots().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].id.as_str()), ("q1", "1"));
    diverge(&disk, &mut model, cluster, 70);
    disk.flush().unwrap();
    disk.apply_snapshot("q1").unwrap();
    assert_eq!(content(&disk), at_q1, "q1 applied by us");
    // written after the revert: copied on write, q1 itself untouched
    write(&disk, &mut model, 3 * cluster, &pattern(99, 512));
    disk.close().unwrap();
    drop(disk);
    assert_clean(&image);
    qemu_img(&["snapshot", "-a", "q1", image.to_str().unwrap()]);
    assert_eq!(converted(&dir, &image), at_q1, "q1 kept by the later write");
    let disk = open_rw(&image);
    disk.delete_snapshot("1").unwrap(); // by its id, as qemu-img allows
    assert!(disk.snapshots().unwrap().is_empty());
    disk.close().unwrap();
    drop(disk);
    assert_clean(&image);
    assert!(!listed(&image).contains("q1"));
    assert_eq!(converted(&dir, &image), at_q1);
}

#[test]
fn deleting_the_older_snapshot_gives_its_clusters_back() {
    let cluster = 65536;
    let dir = Dir::new("snap-delete");
    let image = new_image(&dir, cluster);
    let mut model = vec![0u8; 256 * cluster as usize];
    let disk = open_rw(&image);
    diverge(&disk, &mut model, cluster, 1);
    disk.create_snapshot("a").unwrap();
    diverge(&disk, &mut model, cluster, 20);
    disk.create_snapshot("b").unwrap();
    let at_b = model.clone();
    diverge(&disk, &mut model, cluster, 50);
    disk.delete_snapshot("a").unwrap();
    disk.delete_snapshot("b").unwrap();
    diverge(&disk, &mut model, cluster, 80);
    disk.flush().unwrap();
    // the active tree owns everything again: the same clusters rewritten in place, the file
    // does not grow
    let len = std::fs::metadata(&image).unwrap().len();
    diverge(&disk, &mut model, cluster, 110);
    assert_eq!(content(&disk), model);
    disk.close().unwrap();
    drop(disk);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), len);
    assert_clean(&image);
    assert_eq!(converted(&dir, &image), model);
    assert_ne!(model, at_b);
}

#[test]
fn bad_names_duplicates_unknown_snapshots_and_read_only_images_are_refused() {
    let dir = Dir::new("snap-bad");
    let image = new_image(&dir, 65536);
    let mut disk = open_rw(&image);
    disk.create_snapshot("one").unwrap();
    let err = |e: SnapshotError| e.to_string();
    assert_eq!(
        err(disk.create_snapshot("one").unwrap_err()),
        "the image already has a snapshot named \"one\""
    );
    assert!(err(disk.create_snapshot("").unwrap_err()).contains("it is empty"));
    assert!(err(disk.create_snapshot("a\nb").unwrap_err()).contains("control characters"));
    assert_eq!(
        err(disk.apply_snapshot("two").unwrap_err()),
        "the image has no snapshot named \"two\""
    );
    assert!(matches!(
        disk.delete_snapshot("two"),
        Err(SnapshotError::NotFound(_))
    ));
    disk.close().unwrap();
    drop(disk);
    let file = std::fs::File::open(&image).unwrap();
    let opts = OpenOptions {
        readonly: true,
        ..rw()
    };
    let ro = Qcow2Disk::open(file, &image, &opts, 0).unwrap();
    assert_eq!(ro.snapshots().unwrap().len(), 1);
    assert!(matches!(
        ro.create_snapshot("x"),
        Err(SnapshotError::ReadOnly)
    ));
    assert_clean(&image);
}
