//! Issue 26's backing-file attack (QEMU's CVE-2008-2004 pattern) against the real
//! splitvisor-blk binary, driven from a VM-less frontend over its socket (no KVM needed):
//! - an image whose qcow2 header names a host file as its backing file is refused, probed or
//!   not, with an error that says why; the file's bytes never reach a guest;
//! - a guest cannot plant such a header in its own raw disk while the disk's format is
//!   probed (the write fails; the image keeps its bytes), and once it could (the format given
//!   as raw), the image is only ever served as raw, and a probing start refuses it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::blk_process::{self, bin, status, BlkProcess};
use integration_tests::scratch::Scratch;
use integration_tests::vring::Ring;
use vhost::vhost_user::message::VhostUserProtocolFeatures;

/// A scratch directory with `images/` and, outside it, the host file an attacker wants.
fn scratch(tag: &str) -> Scratch {
    let dir = Scratch::new(&format!("confine-{tag}"));
    std::fs::create_dir_all(dir.path("images")).unwrap();
    std::fs::write(dir.path("secret"), b"SECRET!!".repeat(64 << 10)).unwrap();
    dir
}

/// A qcow2 image at `path` whose backing file is the scratch directory's secret.
fn evil_image(dir: &Scratch, path: &Path) {
    let secret = dir.path("secret");
    let (s, p) = (secret.to_str().unwrap(), path.to_str().unwrap());
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", s, "-F", "raw", p, "1M"]);
}

fn qemu_img(args: &[&str]) {
    let ok = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img (apt install qemu-utils)");
    assert!(ok.success(), "qemu-img {args:?}");
}

/// Run splitvisor-blk on `image` expecting it to refuse to start; returns its stderr.
fn refused_start(dir: &Scratch, image: &Path, format: &str) -> String {
    let socket = dir.path("refused.sock");
    let mut child = Command::new(bin("splitvisor-blk"))
        .args(["--socket", &socket.display().to_string()])
        .args(["--image", &image.display().to_string()])
        .args(["--format", format])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("splitvisor-blk (built by `cargo build --release`)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "splitvisor-blk --format {format} served {}",
                image.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{:?}", out.status);
    assert!(!socket.exists(), "no socket is made for a refused image");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_image_naming_a_host_file_as_its_backing_file_is_refused() {
    let dir = scratch("image");
    let evil = dir.path("images/evil.img");
    evil_image(&dir, &evil);
    let probed = refused_start(&dir, &evil, "auto");
    assert!(probed.contains("its format was probed"), "{probed}");
    assert!(probed.contains("--format qcow2"), "{probed}");
    let explicit = refused_start(&dir, &evil, "qcow2");
    assert!(
        explicit.contains("outside the directories backing files may come from"),
        "{explicit}"
    );
    assert!(explicit.contains("--backing-dir"), "{explicit}");
    // a relative name climbing out is refused before anything is resolved
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "../secret",
        "-F",
        "raw",
        evil.to_str().unwrap(),
    ]);
    let climbing = refused_start(&dir, &evil, "qcow2");
    assert!(climbing.contains("'..' component"), "{climbing}");
}

#[test]
fn a_guest_cannot_turn_its_probed_raw_disk_into_a_qcow2_naming_a_host_file() {
    let dir = scratch("guest");
    // the sector a guest would write: a qcow2 header naming the host file
    let evil = dir.path("evil-header.qcow2");
    evil_image(&dir, &evil);
    let header = std::fs::read(&evil).unwrap()[..4096].to_vec();
    let disk = dir.path("images/disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let socket = dir.path("blk.sock");
    let write_sector0 = |format: &str| -> u8 {
        // fresh guest memory (so fresh rings) for each backend
        let (_ram, mem) = blk_process::guest_memory();
        let _backend = BlkProcess::start(&socket, &disk, format, &[]);
        let mut f = blk_process::connect(&socket, &mem, VhostUserProtocolFeatures::empty());
        let mut ring = Ring::setup(&mut f, &mem, 0, 0).expect("ring");
        let head = blk_process::write_request(&ring, &mem, 0, 0, &header);
        ring.push(&mem, head).unwrap();
        ring.publish(&mem).unwrap();
        ring.kick.write(1).unwrap();
        let used = ring.wait_used(&mem, 1, Duration::from_secs(10)).unwrap();
        assert_eq!(used.len(), 1, "the write was answered");
        status(&mem, 0)
    };
    assert_eq!(write_sector0("auto"), 1, "VIRTIO_BLK_S_IOERR while probed");
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        vec![0u8; 1 << 20],
        "the image kept its bytes"
    );
    // the format given: the guest's disk is its own, and it is only ever served as raw
    assert_eq!(write_sector0("raw"), 0, "written with --format raw");
    assert_eq!(std::fs::read(&disk).unwrap()[..4096], header[..]);
    assert_eq!(write_sector0("raw"), 0, "served as raw again");
    let probed = refused_start(&dir, &disk, "auto");
    assert!(probed.contains("its format was probed"), "{probed}");
}

#[test]
fn a_backend_makes_its_sockets_private_from_their_creation_whatever_the_umask() {
    use std::os::unix::fs::MetadataExt;
    let dir = scratch("umask");
    let disk = dir.path("images/disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (socket, stats) = (dir.path("blk.sock"), dir.path("stats.sock"));
    let script = format!(
        "umask 000; exec {} --socket {} --stats-socket {} --image {} --format raw",
        bin("splitvisor-blk").display(),
        socket.display(),
        stats.display(),
        disk.display()
    );
    let mut child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(socket.exists() && stats.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let modes = [&socket, &stats].map(|p| std::fs::metadata(p).map(|m| m.mode() & 0o777));
    let _ = child.kill();
    let _ = child.wait();
    for (path, mode) in [&socket, &stats].iter().zip(modes) {
        let mode = mode.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
    }
}
