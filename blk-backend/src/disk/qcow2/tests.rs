//! qcow2 against the reference implementation: images made by `qemu-img`, written through
//! our code, must pass `qemu-img check` (no errors, no leaks) and convert to exactly the bytes
//! a plain in-memory model of the disk holds.

use super::*;
use crate::disk::{open, Format};
use std::process::Command;

pub(super) struct Dir(pub(super) PathBuf);

impl Dir {
    pub(super) fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("sv-qcow2-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is needed by the qcow2 tests (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success() || args[0] == "check",
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(super) fn rw() -> OpenOptions {
    OpenOptions {
        readonly: false,
        direct: false,
        format: Format::Qcow2,
        backing_dirs: Vec::new(),
    }
}

pub(super) fn write(disk: &dyn Disk, model: &mut [u8], offset: u64, data: &[u8]) {
    let mut buf = data.to_vec();
    disk.write_at(&GuestIovecs::from_buf(&mut buf), offset)
        .unwrap();
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

pub(super) fn read(disk: &dyn Disk, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    disk.read_at(&GuestIovecs::from_buf(&mut buf), offset)
        .unwrap();
    buf
}

pub(super) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}

/// `qemu-img check` finds nothing wrong and nothing leaked.
pub(super) fn assert_clean(image: &Path) {
    let out = qemu_img(&["check", image.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qemu-img check failed:\n{text}");
    assert!(text.contains("No errors were found"), "{text}");
    assert!(!text.contains("leaked"), "{text}");
}

/// `qemu-img check` passes with no leaks, and the image converts to `model`.
pub(super) fn assert_clean_and_equal(dir: &Dir, image: &Path, model: &[u8]) {
    assert_clean(image);
    let bytes = converted(dir, image);
    assert_eq!(bytes.len(), model.len());
    if let Some(i) = (0..model.len()).find(|&i| bytes[i] != model[i]) {
        panic!("converted image differs from the model at byte {i}");
    }
}

/// What qemu-img reads from the image, as raw bytes.
pub(super) fn converted(dir: &Dir, image: &Path) -> Vec<u8> {
    let raw = dir.path("converted.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    std::fs::read(raw).unwrap()
}

/// A workout: partial, cross-cluster and whole-cluster writes, rewrites, zeroes, discards.
fn workout(disk: &dyn Disk, model: &mut [u8], cluster: u64) {
    write(disk, model, 512, &pattern(1, 4096));
    write(disk, model, cluster - 1024, &pattern(2, 4096)); // across a cluster boundary
    write(disk, model, 4 * cluster, &pattern(3, 3 * cluster as usize)); // whole clusters
    write(disk, model, 512, &pattern(4, 1024)); // rewrite in place
    write(disk, model, 100 * cluster + 7 * 512, &pattern(5, 512)); // another L2 range
    assert_eq!(
        read(disk, 0, 8 * cluster as usize),
        model[..8 * cluster as usize].to_vec()
    );
    disk.write_zeroes(5 * cluster, cluster, true).unwrap();
    model[5 * cluster as usize..6 * cluster as usize].fill(0);
    disk.write_zeroes(4 * cluster + 512, 1024, false).unwrap(); // partial: written as zeroes
    model[4 * cluster as usize + 512..4 * cluster as usize + 1536].fill(0);
    disk.discard(6 * cluster, cluster).unwrap();
    model[6 * cluster as usize..7 * cluster as usize].fill(0);
    disk.flush().unwrap();
    write(disk, model, 6 * cluster, &pattern(6, 512)); // reuses freed clusters
    let len = model.len();
    assert_eq!(read(disk, 0, len), model.to_vec());
}

fn fresh_image_case(tag: &str, create: &[&str], cluster: u64) {
    let dir = Dir::new(tag);
    let image = dir.path("disk.qcow2");
    let size = 128 * cluster;
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(create);
    let size_arg = size.to_string();
    args.extend_from_slice(&[image.to_str().unwrap(), &size_arg]);
    qemu_img(&args);
    let mut model = vec![0u8; size as usize];
    {
        let disk = open(&image, &rw()).unwrap();
        assert_eq!(disk.capacity(), size);
        workout(&*disk, &mut model, cluster);
        disk.close().unwrap();
    }
    assert_clean_and_equal(&dir, &image, &model);
    // and once more after reopening
    let disk = open(&image, &rw()).unwrap();
    assert_eq!(read(&*disk, 0, size as usize), model);
}

#[test]
fn a_version_3_image_stays_clean_and_holds_our_writes() {
    fresh_image_case("v3", &[], 65536);
}

#[test]
fn a_version_2_image_with_small_clusters_stays_clean() {
    fresh_image_case("v2", &["-o", "compat=0.10,cluster_size=4096"], 4096);
}

#[test]
fn a_backing_file_shows_through_and_is_copied_on_write() {
    let dir = Dir::new("backing");
    let base = dir.path("base.raw");
    let size = 4usize << 20;
    let base_bytes = pattern(9, size);
    std::fs::write(&base, &base_bytes).unwrap();
    let image = dir.path("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        image.to_str().unwrap(),
    ]);
    let mut model = base_bytes.clone();
    {
        let disk = open(&image, &rw()).unwrap();
        assert_eq!(read(&*disk, 0, size), base_bytes);
        write(&*disk, &mut model, 70_000, &pattern(3, 2048)); // partial cluster: COW
        disk.write_zeroes(128 << 10, 64 << 10, true).unwrap(); // zero flag over the backing
        model[128 << 10..192 << 10].fill(0);
        assert_eq!(read(&*disk, 0, size), model);
        disk.close().unwrap();
    }
    assert_clean_and_equal(&dir, &image, &model);
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_bytes,
        "the backing file is never written"
    );
}

#[test]
fn compressed_clusters_are_read_and_rewritten_without_leaks() {
    let dir = Dir::new("compressed");
    let raw = dir.path("src.raw");
    let size = 2usize << 20;
    let bytes: Vec<u8> = (0..size).map(|i| (i / 4096) as u8).collect(); // compresses well
    std::fs::write(&raw, &bytes).unwrap();
    let image = dir.path("c.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let mut model = bytes.clone();
    {
        let disk = open(&image, &rw()).unwrap();
        assert_eq!(read(&*disk, 0, size), bytes);
        write(&*disk, &mut model, 100_000, &pattern(7, 4096));
        assert_eq!(read(&*disk, 0, size), model);
        disk.close().unwrap();
    }
    assert_clean_and_equal(&dir, &image, &model);
}

#[test]
fn images_we_cannot_serve_safely_are_refused_with_the_reason() {
    let dir = Dir::new("refuse");
    let image = dir.path("d.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "1M"]);
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[79] |= 1; // incompatible feature: dirty
    std::fs::write(&image, &bytes).unwrap();
    let err = open(&image, &rw()).err().expect("a dirty image is refused");
    let msg = backends::error_chain(&err);
    assert!(msg.contains("dirty"), "{msg}");
    bytes[79] = 0;
    bytes[32..36].copy_from_slice(&1u32.to_be_bytes()); // AES encryption
    std::fs::write(&image, &bytes).unwrap();
    let msg = backends::error_chain(&open(&image, &rw()).err().unwrap());
    assert!(msg.contains("encrypted"), "{msg}");
    let raw = dir.path("r.raw");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    let opts = OpenOptions {
        format: Format::Qcow2,
        ..rw()
    };
    let msg = backends::error_chain(&open(&raw, &opts).err().unwrap());
    assert!(msg.contains("not a qcow2 image"), "{msg}");
}

/// The issue-26 attack: an image naming a host file as its backing file is refused whichever
/// way it is opened, and nothing of that file is read.
#[test]
fn a_backing_file_outside_the_allowed_directories_never_reaches_the_guest() {
    let dir = Dir::new("evil");
    let secret = std::env::temp_dir().join(format!("sv-qcow2-secret-{}", std::process::id()));
    std::fs::write(&secret, vec![b's'; 1 << 20]).unwrap();
    let evil = dir.path("evil.img");
    let (s, e) = (secret.to_str().unwrap(), evil.to_str().unwrap());
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", s, "-F", "raw", e, "1M"]);
    let refused = |format| {
        let opts = OpenOptions { format, ..rw() };
        backends::error_chain(&open(&evil, &opts).err().expect("the image was accepted"))
    };
    let probed = refused(Format::Auto);
    assert!(probed.contains("format was probed"), "{probed}");
    let explicit = refused(Format::Qcow2);
    assert!(
        explicit.contains("outside the directories") && explicit.contains("--backing-dir"),
        "{explicit}"
    );
    // with its directory allowed by name, the chain opens
    let opts = OpenOptions {
        backing_dirs: vec![std::env::temp_dir()],
        ..rw()
    };
    let disk = open(&evil, &opts).expect("an allowed backing directory");
    assert_eq!(read(&*disk, 0, 512), vec![b's'; 512]);
    drop(disk);
    let _ = std::fs::remove_file(secret);
}
