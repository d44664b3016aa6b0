//! INFLIGHT_SHMFD against scripted backends: the region is asked for once per activation, set
//! before the rings, handed to a restarted backend as the very same memfd, dropped by a driver
//! reset, never asked for when not offered, and a bad one fails the activation cleanly.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;

use super::test_backend::*;
use super::*;
use crate::memory::GuestRam;
use crate::virtio::{VirtioDevice, F_VERSION_1};

const REGION_SIZE: u64 = 4096;
const RING: [u32; 6] = RING_SETUP;

/// A backend offering INFLIGHT_SHMFD (and REPLY_ACK) whose GET_INFLIGHT_FD answers regions of
/// `size` bytes.
fn inflight_backend(tag: &str, size: u64) -> ScriptedBackend {
    start_with(
        tag,
        Script {
            protocol: PROTOCOL_F_INFLIGHT_SHMFD | PROTOCOL_F_REPLY_ACK,
            inflight_size: size,
            ..Script::new(F_VERSION_1 | F_PROTOCOL_FEATURES)
        },
    )
}

/// A blk device with two queues of 128 on `backend`, activated with two rings of 64.
fn activated(backend: &ScriptedBackend, ram: &GuestRam, rings: &Rings) -> VhostUserDevice {
    let mut dev = blk(backend, 2, ram);
    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    backend.wait_for(SET_VRING_ENABLE, 2);
    dev
}

/// The (mmap_size, mmap_offset, num_queues, queue_size) of a VhostUserInflight payload.
fn inflight_fields(payload: &[u8]) -> (u64, u64, u16, u16) {
    assert_eq!(payload.len(), 24, "VhostUserInflight's C size");
    let u16_at = |at: usize| u16::from_le_bytes([payload[at], payload[at + 1]]);
    (
        u64_at(payload, 0),
        u64_at(payload, 8),
        u16_at(16),
        u16_at(18),
    )
}

/// The one descriptor the `n`th SET_INFLIGHT_FD carried.
fn sent_region(backend: &ScriptedBackend, n: usize) -> File {
    let mut fds = backend.fds(SET_INFLIGHT_FD).remove(n);
    assert_eq!(fds.len(), 1, "one descriptor with SET_INFLIGHT_FD");
    fds.remove(0)
}

/// The memfd `backend` created for its `n`th GET_INFLIGHT_FD.
fn created_region(backend: &ScriptedBackend, n: usize) -> File {
    backend.script.inflight_regions.lock().unwrap()[n]
        .try_clone()
        .unwrap()
}

/// Whether `theirs` is the same file as `ours`: a byte written through one reads back
/// through the other.
fn same_file(ours: &File, theirs: &File, byte: u8, at: u64) -> bool {
    ours.write_all_at(&[byte], at).unwrap();
    let mut seen = [0u8];
    theirs.read_exact_at(&mut seen, at).unwrap();
    seen[0] == byte
}

#[test]
fn activation_gets_the_region_once_and_sets_it_before_the_rings() {
    let ram = guest_ram();
    let rings = Rings::new();
    let backend = inflight_backend("inflight-activate", REGION_SIZE);
    let mut dev = blk(&backend, 2, &ram);
    backend.wait_for(SET_PROTOCOL_FEATURES, 1); // the handshake's last message has no reply
    let acked = PROTOCOL_F_INFLIGHT_SHMFD | PROTOCOL_F_REPLY_ACK;
    assert_eq!(dev.vhost_user_state().protocol_features, acked);
    let handshake = backend.requests().len();
    assert!(
        !dev.vhost_user_state().inflight_tracking,
        "not before DRIVER_OK"
    );

    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    backend.wait_for(SET_VRING_ENABLE, 2);
    let mut expected = vec![
        SET_FEATURES,
        SET_MEM_TABLE,
        GET_INFLIGHT_FD,
        SET_INFLIGHT_FD,
    ];
    expected.extend(RING.iter().chain(&RING));
    assert_eq!(backend.requests()[handshake..], expected[..]);

    let asked = inflight_fields(&backend.messages(GET_INFLIGHT_FD)[0]);
    assert_eq!(asked, (0, 0, 2, 128), "the device's queue count and size");
    let set = inflight_fields(&backend.messages(SET_INFLIGHT_FD)[0]);
    assert_eq!(set, (REGION_SIZE, 0, 2, 128), "the reply, as it came");
    let (created, sent) = (created_region(&backend, 0), sent_region(&backend, 0));
    assert!(
        same_file(&created, &sent, 0x5a, 10),
        "the backend's own memfd"
    );
    assert!(dev.vhost_user_state().inflight_tracking);
    assert!(dev.inflight_tracking());
}

#[test]
fn a_restarted_backend_gets_the_same_region_and_no_new_one() {
    let ram = guest_ram();
    let rings = Rings::new();
    let tag = "inflight-restart";
    let first = inflight_backend(tag, REGION_SIZE);
    let mut dev = activated(&first, &ram, &rings);
    first.kill();
    assert!(dev.peer_gone());
    dev.backend_gone();
    assert!(dev.inflight_tracking(), "kept while the backend is away");

    let second = inflight_backend(tag, REGION_SIZE);
    let handshake = [
        SET_OWNER,
        GET_FEATURES,
        GET_PROTOCOL_FEATURES,
        SET_PROTOCOL_FEATURES,
    ];
    dev.reconnect(UnixStream::connect(&second.path).unwrap())
        .unwrap();
    second.wait_for(SET_VRING_ENABLE, 2);
    let mut expected = handshake.to_vec();
    expected.extend([SET_FEATURES, SET_MEM_TABLE, SET_INFLIGHT_FD]);
    expected.extend(RING.iter().chain(&RING));
    assert_eq!(second.requests(), expected, "no GET_INFLIGHT_FD");
    assert_eq!(
        second.messages(SET_INFLIGHT_FD),
        first.messages(SET_INFLIGHT_FD)
    );
    // what the first backend recorded in its memfd, the second one reads
    let (old, new) = (created_region(&first, 0), sent_region(&second, 0));
    assert!(same_file(&old, &new, 0xa7, REGION_SIZE - 1));
    assert!(second.script.inflight_regions.lock().unwrap().is_empty());
    assert!(dev.link_status().is_up());
}

#[test]
fn after_a_driver_reset_the_next_activation_gets_a_fresh_region() {
    let ram = guest_ram();
    let rings = Rings::new();
    let backend = inflight_backend("inflight-reset", REGION_SIZE);
    let mut dev = activated(&backend, &ram, &rings);
    dev.reset();
    assert!(!dev.inflight_tracking(), "dropped with the rings");
    assert!(!dev.vhost_user_state().inflight_tracking);

    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    backend.wait_for(SET_VRING_ENABLE, 4);
    assert_eq!(backend.messages(GET_INFLIGHT_FD).len(), 2);
    assert_eq!(backend.messages(SET_INFLIGHT_FD).len(), 2);
    let (old, new) = (created_region(&backend, 0), created_region(&backend, 1));
    let sent = sent_region(&backend, 1);
    assert!(same_file(&new, &sent, 1, 0), "the new region is sent");
    assert!(!same_file(&old, &sent, 2, 0), "not the old one");
    assert!(dev.inflight_tracking());
}

#[test]
fn without_the_feature_offered_no_region_is_asked_for_or_sent() {
    let ram = guest_ram();
    let rings = Rings::new();
    let backend = start_with(
        "inflight-none",
        Script {
            protocol: PROTOCOL_F_REPLY_ACK,
            inflight_size: REGION_SIZE,
            ..Script::new(F_VERSION_1 | F_PROTOCOL_FEATURES)
        },
    );
    let mut dev = activated(&backend, &ram, &rings);
    dev.reset();
    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    backend.wait_for(SET_VRING_ENABLE, 4);
    let requests = backend.requests();
    assert!(!requests.contains(&GET_INFLIGHT_FD), "{requests:?}");
    assert!(!requests.contains(&SET_INFLIGHT_FD), "{requests:?}");
    assert!(!dev.vhost_user_state().inflight_tracking);
}

#[test]
fn an_empty_region_fails_the_activation_naming_the_device() {
    let ram = guest_ram();
    let rings = Rings::new();
    let backend = inflight_backend("inflight-empty", 0);
    let mut dev = blk(&backend, 2, &ram);
    let err = dev.activate(F_VERSION_1, &rings.setups()).unwrap_err();
    assert!(
        err.contains("blk0") && err.contains("GET_INFLIGHT_FD") && err.contains("size is 0"),
        "{err}"
    );
    assert!(
        dev.link_status().is_up(),
        "the backend answered; it is not gone"
    );
    assert!(!dev.inflight_tracking());
    assert!(dev.vhost_user_state().vrings.is_empty());
    drop(dev);
    backend.wait_closed();
    assert_eq!(backend.messages(GET_INFLIGHT_FD).len(), 1);
    assert!(backend.messages(SET_INFLIGHT_FD).is_empty());
    assert!(
        backend.messages(SET_VRING_NUM).is_empty(),
        "no ring started"
    );
}
