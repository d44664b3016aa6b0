//! External snapshots on a real, confined splitvisor-blk (no VM, no KVM): a frontend writes a
//! sector, the control socket's `reopen` switches the disk to a new qcow2 overlay in
//! `--overlay-dir`, the frontend writes another; the old image keeps only the first write
//! (the snapshot), the overlay reads as both (`qemu-img convert`), `qemu-img check` finds it
//! clean and names the old image as its backing file. An overlay outside the directory is
//! refused, and the disk is served as before.

use std::time::Duration;

use api::backend::blk::control_request;
use integration_tests::blk_process::{self, status, BlkProcess};
use integration_tests::scratch::Scratch;
use integration_tests::vring::Ring;
use serde_json::{json, Value};
use vhost::vhost_user::message::VhostUserProtocolFeatures;

fn qemu_img(args: &[&str]) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is needed (scripts/install-deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "qemu-img {args:?}: {text}");
    text
}

#[test]
fn reopen_switches_a_served_disk_to_a_new_overlay_and_the_old_image_stays_as_it_was() {
    let dir = Scratch::new("blk-reopen");
    let image = dir.path("base.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let overlays = dir.path("overlays");
    std::fs::create_dir(&overlays).unwrap();
    let socket = dir.path("blk.sock");
    let control = dir.path("blk-ctl.sock");
    let (c, o) = (
        control.display().to_string(),
        overlays.display().to_string(),
    );
    // landlock on (the default): the overlay directory is the only place it may create files
    let mut backend = BlkProcess::start(
        &socket,
        &image,
        "raw",
        &["--control", &c, "--overlay-dir", &o],
    );
    let (_ram, mem) = blk_process::guest_memory();
    let mut f = blk_process::connect(&socket, &mem, VhostUserProtocolFeatures::empty());
    let mut ring = Ring::setup(&mut f, &mem, 0, 0).expect("ring");
    let mut write = |slot: u16, sector: u64, byte: u8| {
        let head = blk_process::write_request(&ring, &mem, slot, sector, &[byte; 512]);
        ring.push(&mem, head).unwrap();
        ring.publish(&mem).unwrap();
        ring.kick.write(1).unwrap();
        let done = ring.wait_used(&mem, 1, Duration::from_secs(10)).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(status(&mem, slot), 0, "write {slot} OK");
    };
    write(0, 8, b'A');
    let ask = |req: Value| control_request(&control, &req, Duration::from_secs(20)).unwrap();
    let elsewhere = dir.path("elsewhere.qcow2").display().to_string();
    let r = ask(json!({"op": "reopen", "image": elsewhere}));
    assert!(
        r["error"]
            .as_str()
            .unwrap_or("")
            .contains("is not in the overlay directory"),
        "{r}"
    );
    let top = overlays.join("base.s1.qcow2");
    let r = ask(json!({"op": "reopen", "image": top}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["backing"], json!(image), "{r}");
    let info = ask(json!({"op": "info"}));
    assert_eq!(
        (info["format"].as_str(), info["image"].clone()),
        (Some("qcow2"), json!(top))
    );
    write(1, 16, b'B');
    write(2, 8, b'C'); // over the snapshot's sector: copied on write into the overlay
    drop(f);
    backend.terminate();

    let base = std::fs::read(&image).unwrap();
    assert_eq!(
        &base[8 * 512..9 * 512],
        &[b'A'; 512][..],
        "the snapshot keeps A"
    );
    assert!(
        base[16 * 512..17 * 512].iter().all(|b| *b == 0),
        "and never saw B"
    );
    let top_s = top.display().to_string();
    let check = qemu_img(&["check", &top_s]);
    assert!(check.contains("No errors were found"), "{check}");
    let info = qemu_img(&["info", "--output=json", &top_s]);
    assert!(
        info.contains(&format!("\"backing-filename\": \"{}\"", image.display())),
        "{info}"
    );
    let raw = dir.path("top.raw");
    qemu_img(&["convert", "-O", "raw", &top_s, raw.to_str().unwrap()]);
    let now = std::fs::read(&raw).unwrap();
    assert_eq!(&now[8 * 512..9 * 512], &[b'C'; 512][..]);
    assert_eq!(&now[16 * 512..17 * 512], &[b'B'; 512][..]);
}
