//! Inflight tracking between real splitvisor-blk processes, driven by a VM-less frontend over
//! the vhost-user socket (no KVM needed): a backend is killed with one request popped but not
//! completed and two others completed out of order; the next process on the same socket, given
//! the same inflight memfd, runs exactly the unfinished request again and then the next new
//! one — no duplicate of a completed request, none lost. A region no backend could have
//! written is refused (nothing resubmitted) and the device still serves.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use integration_tests::blk_process::{self, status, BlkProcess};
use integration_tests::vring::{Ring, QUEUE_SIZE};
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Connect with INFLIGHT_SHMFD.
fn connect(socket: &std::path::Path, mem: &GuestMemoryMmap) -> Frontend {
    blk_process::connect(socket, mem, VhostUserProtocolFeatures::INFLIGHT_SHMFD)
}

/// What the killed backend left: the region of queue 0 (libvhost-user's layout) saying
/// `in_flight` heads are in flight with those counters, `used` published, the last publish
/// of `last_head` complete.
fn write_region(region: &File, version: u16, used: u16, last_head: u16, in_flight: &[(u16, u64)]) {
    region.write_all_at(&version.to_le_bytes(), 8).unwrap();
    region.write_all_at(&QUEUE_SIZE.to_le_bytes(), 10).unwrap();
    region.write_all_at(&last_head.to_le_bytes(), 12).unwrap();
    region.write_all_at(&used.to_le_bytes(), 14).unwrap();
    for &(head, counter) in in_flight {
        let at = 16 + 16 * u64::from(head);
        region.write_all_at(&[1], at).unwrap();
        region.write_all_at(&counter.to_le_bytes(), at + 8).unwrap();
    }
}

/// The used ring as the killed backend left it: `done` published in that order.
fn write_used(ring: &Ring, mem: &GuestMemoryMmap, done: &[u16]) {
    for (i, head) in done.iter().enumerate() {
        let elem = ring.used() + 4 + 8 * i as u64;
        mem.write_obj(u32::from(*head).to_le(), GuestAddress(elem))
            .unwrap();
        mem.write_obj(1u32.to_le(), GuestAddress(elem + 4)).unwrap();
    }
    mem.write_obj((done.len() as u16).to_le(), GuestAddress(ring.used() + 2))
        .unwrap();
}

struct Case {
    dir: PathBuf,
    image: PathBuf,
    socket: PathBuf,
}

impl Case {
    fn new(tag: &str, format: &str) -> Case {
        let dir = std::env::temp_dir().join(format!("sv-inflight-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        if format == "qcow2" {
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&image)
                .arg("1M")
                .status()
                .expect("qemu-img (apt install qemu-utils)");
            assert!(out.success());
        } else {
            std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        }
        let socket = dir.join("blk.sock");
        Case { dir, image, socket }
    }

    /// Sector `8 * slot`'s first byte as the guest would read it (through qemu-img for qcow2).
    fn disk_byte(&self, format: &str, slot: u16) -> u8 {
        let raw = if format == "qcow2" {
            let out = self.dir.join("flat.raw");
            let ok = Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(&self.image)
                .arg(&out)
                .status()
                .unwrap();
            assert!(ok.success());
            out
        } else {
            self.image.clone()
        };
        std::fs::read(raw).unwrap()[usize::from(slot) * 4096]
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The killed backend A had popped W, X, Y (avail 0..3), completed Y then W, X still in
/// flight; Z (avail 3) was added after. `region_version` 1 is what A wrote; anything else is a
/// region no backend of ours writes. Returns the used entries backend B adds, and the case.
fn restart_with(tag: &str, format: &str, region_version: u16) -> (Vec<(u16, u32)>, Case) {
    let case = Case::new(tag, format);
    let (_ram, mem) = blk_process::guest_memory();

    let mut a = BlkProcess::start(&case.socket, &case.image, format, &[]);
    let mut f = connect(&case.socket, &mem);
    let asked = VhostUserInflight::new(0, 0, 1, QUEUE_SIZE);
    let (info, region) = f.get_inflight_fd(&asked).expect("GET_INFLIGHT_FD");
    assert!(info.mmap_size >= 16 + 16 * u64::from(QUEUE_SIZE));
    f.set_inflight_fd(&info, region.as_raw_fd())
        .expect("SET_INFLIGHT_FD");
    let mut ring = Ring::setup(&mut f, &mem, 0, 0).expect("ring");
    a.kill();
    drop(f);

    let [w, x, y, z] = [0u16, 1, 2, 3].map(|slot| {
        let data = [b'w' + slot as u8; 512];
        blk_process::write_request(&ring, &mem, slot, 8 * u64::from(slot), &data)
    });
    for head in [w, x, y, z] {
        ring.push(&mem, head).unwrap();
    }
    ring.publish(&mem).unwrap();
    write_used(&ring, &mem, &[y, w]);
    write_region(&region, region_version, 2, w, &[(x, 41)]);

    let _b = BlkProcess::start(&case.socket, &case.image, format, &[]);
    let mut f = connect(&case.socket, &mem);
    f.set_inflight_fd(&info, region.as_raw_fd())
        .expect("SET_INFLIGHT_FD to the new backend");
    let mut ring = Ring::resume(&mut f, &mem, 0, 0, 2).expect("ring on the new backend");
    ring.avail_idx = 4;
    ring.kick.write(1).unwrap();
    let mut used = ring.wait_used(&mem, 2, Duration::from_secs(10)).unwrap();
    // nothing more comes (a duplicate would)
    std::thread::sleep(Duration::from_millis(300));
    used.extend(ring.take_used(&mem).unwrap());
    for (head, _) in &used {
        assert_eq!(status(&mem, head / 3), 0, "request {head} answered OK");
    }
    drop(f);
    // io_uring may complete them in either order; the order of resubmission is unit-tested
    used.sort_unstable();
    (used, case)
}

/// X is run again, then Z; nothing else (W and Y were never really written by the "killed"
/// backend, so running them again would show).
fn assert_resubmitted_once(format: &str) -> Case {
    let (used, case) = restart_with(format, format, 1);
    assert_eq!(
        used,
        vec![(3, 1), (9, 1)],
        "X resubmitted, then Z; nothing else"
    );
    let bytes = [0, 1, 2, 3].map(|slot| case.disk_byte(format, slot));
    assert_eq!(bytes, [0, b'x', 0, b'z'], "what reached the {format} image");
    case
}

#[test]
fn a_restarted_backend_resubmits_the_unfinished_request_once_on_raw() {
    assert_resubmitted_once("raw");
}

#[test]
fn a_restarted_backend_resubmits_the_unfinished_request_once_on_qcow2() {
    let case = assert_resubmitted_once("qcow2");
    let check = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&case.image)
        .status()
        .unwrap();
    assert!(check.success(), "qemu-img check finds the image clean");
}

#[test]
fn a_region_no_backend_wrote_is_refused_and_the_device_still_serves() {
    let (used, case) = restart_with("hostile", "raw", 9);
    // nothing taken from the region: the new backend starts at the used index, as without one
    assert_eq!(used, vec![(6, 1), (9, 1)], "Y and Z, not X");
    assert_eq!(
        case.disk_byte("raw", 1),
        0,
        "X was not run from a refused region"
    );
    assert_eq!(case.disk_byte("raw", 3), b'z');
}
