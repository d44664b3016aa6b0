//! Harness: the input is a qcow2 image, opened through `disk::open` as the backend opens one,
//! then read, written, zeroed, discarded, flushed, closed and opened again.
//!
//! Input format: the last 8 bytes are controls, everything before them is the image (cut at
//! 1 MiB); an input of 8 bytes or fewer is all image, with zero controls.
//!
//! | control byte | meaning |
//! |---|---|
//! | 0 | bit 0 open read-only; bit 1 format `auto` (probed) instead of `qcow2`; bit 2 also write zeroes over and discard the second range; bit 3 open the image again after closing it and read both ranges; bits 4-7 `s`: offsets count in units of 512 << s bytes |
//! | 1-4 | the first range's offset, u32 LE units, modulo the disk's capacity |
//! | 5-6 | both ranges' length: u16 LE modulo 128, plus one, sectors (at most 64 KiB), cut at the disk's end |
//! | 7 | the second range's offset in units, modulo the capacity; also the written pattern's seed |
//!
//! Nothing is written outside the scratch directory: the image is written to `disk.qcow2` in
//! a fresh directory holding only it and `base.raw` (64 KiB of a pattern), and a backing file
//! name in the image is confined to that directory (its `/` bytes become `_`, and `.` or `..`
//! becomes `_` or `_.`) so that no input reads another host file. Every operation is bounded
//! here (64 KiB); what the code under test allocates for its metadata it must bound itself.

use std::io;

use super::{pattern, ScratchDir};
use crate::disk::{self, Disk, Format, GuestIovecs, OpenOptions};

mod seeds;
pub use seeds::qcow2_image_seeds;

const CONTROL_LEN: usize = 8;
const MAX_IMAGE: usize = 1 << 20;
const IMAGE_NAME: &str = "disk.qcow2";
const BACKING_NAME: &str = "base.raw";
const BACKING_LEN: usize = 64 << 10;
const BACKING_SEED: u8 = 0xb0;
const MAX_SECTORS: u64 = 128;

/// Run one input (format in the module documentation).
pub fn qcow2_image(data: &[u8]) {
    run(data);
}

/// What the image let the harness do.
#[derive(Default)]
pub(super) struct Report {
    /// Why the image was refused at open.
    pub refused: Option<String>,
    pub opened: bool,
    pub capacity: u64,
    pub ops_ok: u32,
    pub ops_failed: u32,
    /// The bytes of the first read.
    pub first_read: Option<Vec<u8>>,
    /// A successful write read back as written: right away, and after reopening.
    pub readback: Option<bool>,
    pub reopen_readback: Option<bool>,
    /// A successful write-zeroes read back as zeroes.
    pub zeroes_readback: Option<bool>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("refused", &self.refused)
            .field("opened", &self.opened)
            .field("capacity", &self.capacity)
            .field("ops_ok", &self.ops_ok)
            .field("ops_failed", &self.ops_failed)
            .field("first_read_len", &self.first_read.as_ref().map(Vec::len))
            .field("readback", &self.readback)
            .field("reopen_readback", &self.reopen_readback)
            .field("zeroes_readback", &self.zeroes_readback)
            .finish()
    }
}

impl Report {
    fn note<T>(&mut self, result: io::Result<T>) -> Option<T> {
        match result {
            Ok(v) => {
                self.ops_ok += 1;
                Some(v)
            }
            Err(_) => {
                self.ops_failed += 1;
                None
            }
        }
    }
}

/// The controls, decoded.
struct Control {
    opts: OpenOptions,
    zeroing: bool,
    reopen: bool,
    /// The two ranges' offsets and their length.
    first: u64,
    second: u64,
    len: u64,
    seed: u8,
}

impl Control {
    fn new(c: [u8; CONTROL_LEN], capacity: u64) -> Control {
        let unit = 512u64 << (c[0] >> 4);
        let at = |units: u64| match capacity {
            0 => 0,
            cap => units * unit % cap,
        };
        let first = at(u64::from(u32::from_le_bytes([c[1], c[2], c[3], c[4]])));
        let second = at(u64::from(c[7]));
        let sectors = u64::from(u16::from_le_bytes([c[5], c[6]])) % MAX_SECTORS + 1;
        let end = first.max(second);
        Control {
            opts: open_options(c[0]),
            zeroing: c[0] & 4 != 0,
            reopen: c[0] & 8 != 0,
            first,
            second,
            len: (sectors * 512).min(capacity - end),
            seed: c[7],
        }
    }
}

fn open_options(flags: u8) -> OpenOptions {
    OpenOptions {
        readonly: flags & 1 != 0,
        direct: false,
        format: if flags & 2 != 0 {
            Format::Auto
        } else {
            Format::Qcow2
        },
        backing_dirs: Vec::new(),
    }
}

fn be64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn be32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Keep a backing file name inside the scratch directory (see the module documentation).
fn confine_backing_name(image: &mut [u8]) {
    let (Some(offset), Some(len)) = (be64_at(image, 8), be32_at(image, 16)) else {
        return;
    };
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    let end = start
        .saturating_add(len.min(1023) as usize)
        .min(image.len());
    let Some(name) = image.get_mut(start..end) else {
        return;
    };
    for b in name.iter_mut().filter(|b| **b == b'/') {
        *b = b'_';
    }
    if name == b"." || name == b".." {
        name[0] = b'_';
    }
}

fn read(disk: &dyn Disk, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    disk.read_at(&GuestIovecs::from_buf(&mut buf), offset)?;
    Ok(buf)
}

fn write(disk: &dyn Disk, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut buf = data.to_vec();
    disk.write_at(&GuestIovecs::from_buf(&mut buf), offset)
}

pub(super) fn run(data: &[u8]) -> Report {
    let (image, control) = match data.len().checked_sub(CONTROL_LEN) {
        Some(n) if n > 0 => {
            let mut c = [0u8; CONTROL_LEN];
            c.copy_from_slice(&data[n..]);
            (&data[..n], c)
        }
        _ => (data, [0; CONTROL_LEN]),
    };
    let mut image = image[..image.len().min(MAX_IMAGE)].to_vec();
    confine_backing_name(&mut image);
    let dir = ScratchDir::new("qcow2").expect("a scratch directory");
    std::fs::write(dir.0.join(BACKING_NAME), pattern(BACKING_SEED, BACKING_LEN))
        .expect("a scratch backing file");
    let path = dir.0.join(IMAGE_NAME);
    std::fs::write(&path, &image).expect("a scratch image");

    let mut report = Report::default();
    let opts = open_options(control[0]);
    let disk = match disk::open(&path, &opts) {
        Ok(disk) => disk,
        Err(e) => {
            report.refused = Some(backends::error_chain(&e));
            return report;
        }
    };
    report.opened = true;
    report.capacity = disk.capacity();
    let c = Control::new(control, report.capacity);
    let readonly = c.opts.readonly;
    let data = pattern(c.seed, c.len as usize);
    let mut written = false;
    if c.len > 0 {
        report.first_read = report.note(read(&*disk, c.first, c.len));
        if !readonly {
            written = report.note(write(&*disk, c.first, &data)).is_some();
            if written {
                let back = report.note(read(&*disk, c.first, c.len));
                report.readback = back.map(|b| b == data);
            }
        }
        if !readonly && c.zeroing {
            if report
                .note(disk.write_zeroes(c.second, c.len, true))
                .is_some()
            {
                let back = report.note(read(&*disk, c.second, c.len));
                report.zeroes_readback = back.map(|b| b.iter().all(|x| *x == 0));
            }
            report.note(disk.discard(c.second, c.len));
        }
    }
    report.note(disk.flush());
    if !readonly {
        report.note(disk.close());
    }
    drop(disk);

    if c.reopen {
        let Ok(disk) = disk::open(&path, &c.opts) else {
            report.ops_failed += 1;
            return report;
        };
        if c.len > 0 {
            let back = report.note(read(&*disk, c.first, c.len));
            let apart = c.first + c.len <= c.second || c.second + c.len <= c.first;
            if written && (apart || !c.zeroing) {
                report.reopen_readback = back.map(|b| b == data);
            }
            report.note(read(&*disk, c.second, c.len));
        }
        if !readonly {
            report.note(disk.close());
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_stay_in_the_scratch_directory() {
        for (name, confined) in [
            (&b"/etc/passwd"[..], &b"_etc_passwd"[..]),
            (b"../x", b".._x"),
            (b"..", b"_."),
            (b".", b"_"),
            (b"base.raw", b"base.raw"),
        ] {
            // a header naming the backing file at 200 (the rest of it does not matter here)
            let at = 200;
            let mut image = vec![0u8; 512];
            image[8..16].copy_from_slice(&(at as u64).to_be_bytes());
            image[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            image[at..at + name.len()].copy_from_slice(name);
            image[at + name.len()] = b'/';
            confine_backing_name(&mut image);
            assert_eq!(&image[at..at + name.len()], confined);
            assert_eq!(image[at + name.len()], b'/', "only the name is touched");
        }
        // offsets and sizes past the image are left alone
        let mut image = vec![0u8; 24];
        image[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        image[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        confine_backing_name(&mut image);
    }
}
