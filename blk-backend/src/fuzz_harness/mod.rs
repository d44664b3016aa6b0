//! Fuzz harnesses: entry points that `fuzz/fuzz_targets/` call with libFuzzer's bytes and that
//! `integration-tests/tests/fuzz_corpora.rs` replays over the committed corpora. Each takes any
//! byte string and must return normally: a panic, hang or unbounded allocation here is a bug in
//! the code under test, never in the input.
//!
//! - [`request`]: descriptor chains on a split virtqueue, parsed and executed by the device
//!   (`request.rs`, `blk.rs`) against a raw disk;
//! - [`qcow2_image`]: the input is a qcow2 image, opened, read, written, flushed and closed;
//! - [`request_seeds`], [`qcow2_image_seeds`]: the inputs the corpora start from, named.
//!
//! Scratch files live in a tmpfs (`/dev/shm`) when there is one, so that the flushes the code
//! under test makes cost nothing; each is private to one run and removed when it ends.

mod qcow2_image;
mod request;
pub mod vhost_user;

pub use qcow2_image::{qcow2_image, qcow2_image_seeds};
pub use request::{request, request_seeds};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A name no other run (in this process or another) uses.
fn scratch_path(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    root.join(format!("sv-blk-fuzz-{tag}-{}-{n}", std::process::id()))
}

/// A scratch file, removed on drop.
struct ScratchFile(PathBuf);

impl ScratchFile {
    fn new(tag: &str, bytes: &[u8]) -> std::io::Result<ScratchFile> {
        let file = ScratchFile(scratch_path(tag));
        std::fs::write(&file.0, bytes)?;
        Ok(file)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An empty scratch directory, removed with its content on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> std::io::Result<ScratchDir> {
        let dir = ScratchDir(scratch_path(tag));
        std::fs::create_dir(&dir.0)?;
        Ok(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Recognisable bytes: every 512-byte sector differs from its neighbours.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}
