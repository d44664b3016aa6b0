//! vhost-user DEVICE_STATE against real backend processes (no VM, no KVM): the state a
//! stopped splitvisor-blk or splitvisor-balloon saves through SET_DEVICE_STATE_FD loads into
//! a new process serving the same thing, and a process serving something else (a disk of
//! another size) refuses it — CHECK_DEVICE_STATE fails and its log names the difference.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::blk_process::{bin, guest_memory};
use integration_tests::scratch::Scratch;
use vhost::vhost_user::message::{
    VhostTransferStateDirection as Direction, VhostTransferStatePhase as Phase,
    VhostUserProtocolFeatures as P,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

/// A backend process on `socket`, its stderr in `log`; returns once the socket exists.
fn backend(binary: &str, socket: &Path, log: &Path, args: &[&str]) -> Child {
    let mut child = Command::new(bin(binary))
        .args(["--socket", &socket.display().to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .expect("the backends (built by `cargo build --release`)");
    let start = Instant::now();
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{binary} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap()
            );
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn connect(socket: &Path) -> Frontend {
    let (_ram, mem) = guest_memory();
    let mut f = Frontend::connect(socket, 1).expect("connect");
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    let offered = f.get_protocol_features().unwrap();
    assert!(offered.contains(P::DEVICE_STATE), "{offered:?}");
    f.set_protocol_features(P::DEVICE_STATE | P::CONFIG)
        .unwrap();
    f.set_features(features & (1 << 32 | 1 << 30)).unwrap();
    integration_tests::vring::share_memory(&mut f, &mem).unwrap();
    f
}

fn pipe() -> (File, OwnedFd) {
    let (r, w) = std::io::pipe().unwrap();
    (File::from(OwnedFd::from(r)), OwnedFd::from(w))
}

fn save(f: &Frontend) -> Vec<u8> {
    let (mut r, w) = pipe();
    let other = f
        .set_device_state_fd(Direction::SAVE, Phase::STOPPED, w)
        .unwrap();
    assert!(other.is_none(), "the backend uses the frontend's pipe");
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).unwrap();
    f.check_device_state().expect("the save went through");
    bytes
}

fn load(f: &Frontend, bytes: &[u8]) -> Result<(), vhost::Error> {
    let (r, w) = pipe();
    f.set_device_state_fd(Direction::LOAD, Phase::STOPPED, r.into())
        .unwrap();
    File::from(w).write_all(bytes).unwrap();
    f.check_device_state()
}

#[test]
fn a_disk_state_loads_into_the_same_disk_and_is_refused_by_another() {
    let dir = Scratch::new("device-state-blk");
    let mut children = Vec::new();
    let mut start = |tag: &str, size: usize| {
        let image = dir.path(&format!("{tag}.img"));
        std::fs::write(&image, vec![0u8; size]).unwrap();
        let socket = dir.path(&format!("{tag}.sock"));
        let log = dir.path(&format!("{tag}.log"));
        let image = image.display().to_string();
        children.push(backend(
            "splitvisor-blk",
            &socket,
            &log,
            &["--image", &image, "--format", "raw"],
        ));
        (connect(&socket), log)
    };
    let (first, _) = start("first", 1 << 20);
    let bytes = save(&first);
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["format"], "splitvisor-device-state", "{doc}");
    assert_eq!(doc["device"], "blk");
    assert_eq!(doc["state"]["capacity"], 1 << 20);
    assert_eq!(doc["state"]["format"], "raw");
    let (copy, _) = start("copy", 1 << 20);
    load(&copy, &bytes).expect("the same disk takes its state");
    let (other, log) = start("other", 2 << 20);
    assert!(load(&other, &bytes).is_err(), "a larger disk refuses it");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the snapshot's disk was raw of 1048576 bytes; this backend serves raw of 2097152 bytes"),
        "{text}"
    );
    // another device's state, and a newer format, are refused too
    let (again, log) = start("again", 1 << 20);
    let foreign = br#"{"format":"splitvisor-device-state","version":1,"device":"net","state":{}}"#;
    assert!(load(&again, foreign).is_err());
    let newer = br#"{"format":"splitvisor-device-state","version":9,"device":"blk","state":{}}"#;
    assert!(load(&again, newer).is_err());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("a \"net\" device's") && text.contains("format version 9"),
        "{text}"
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_balloon_state_carries_its_target_into_a_new_process() {
    let dir = Scratch::new("device-state-balloon");
    let mut children = Vec::new();
    let mut start = |tag: &str| {
        let socket = dir.path(&format!("{tag}.sock"));
        let log = dir.path(&format!("{tag}.log"));
        children.push(backend("splitvisor-balloon", &socket, &log, &[]));
        connect(&socket)
    };
    let first = start("first");
    let bytes = save(&first);
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["device"], "balloon", "{doc}");
    assert_eq!(doc["state"]["ram_bytes"], 16 << 20, "{doc}");
    // as if the guest had given 256 pages (1 MiB) from 8 MiB on
    doc["state"]["num_pages"] = 256.into();
    doc["state"]["actual"] = 256.into();
    doc["state"]["pages"] = serde_json::json!([[2048, 256]]);
    let second = start("second");
    load(&second, doc.to_string().as_bytes()).expect("taken");
    let again = save(&second);
    let back: serde_json::Value = serde_json::from_slice(&again).unwrap();
    assert_eq!(back["state"]["actual"], 256, "{back}");
    assert_eq!(
        back["state"]["pages"],
        serde_json::json!([[2048, 256]]),
        "{back}"
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}
