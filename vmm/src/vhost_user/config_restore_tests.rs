//! The config space across a backend's restart: a new backend under a running driver gets the
//! space the guest last saw (SET_CONFIG flagged LIVE_MIGRATION) before the device reads it
//! again — what keeps a new balloon process from asking the guest to deflate. Only a space
//! that changed is sent, only once the driver runs the device, only with CONFIG, and a
//! backend that refuses it does not fail the reconnect.

use std::os::unix::net::UnixStream;

use super::*;
use crate::memory::GuestRam;
use crate::vhost_user::test_backend::*;
use crate::vhost_user::F_PROTOCOL_FEATURES;
use crate::virtio::device_type::{QueueUnits, TYPE_BALLOON};
use crate::virtio::{VirtioDevice, F_VERSION_1};

const OFFER: u64 = F_VERSION_1 | F_PROTOCOL_FEATURES;
/// The old process's space: a target of 0x30000 pages (768 MiB), 0x2f000 of them given.
const SERVED: [u8; 8] = [0, 0, 3, 0, 0, 0xf0, 2, 0];
/// A new process's space: nothing asked, nothing given.
const FRESH: [u8; 8] = [0; 8];

/// A backend on `tag`'s path with CONFIG (and REPLY_ACK when `ack`) serving `space`.
fn backend(tag: &str, space: &[u8], ack: bool, refuse_restore: bool) -> ScriptedBackend {
    let reply_ack = if ack { PROTOCOL_F_REPLY_ACK } else { 0 };
    start_with(
        tag,
        Script {
            protocol: PROTOCOL_F_CONFIG | reply_ack,
            refuse_restore,
            ..Script::new(OFFER)
        }
        .with_config(space),
    )
}

/// A balloon device on `first` whose driver read the config space and (when `activate`)
/// runs the device; then the backend dies.
fn balloon_after_a_crash(
    first: &ScriptedBackend,
    ram: &GuestRam,
    rings: &Rings,
    activate: bool,
) -> VhostUserDevice {
    crashed(first, ram, rings, activate, true)
}

/// A balloon device on `first` (activated or not, its config read by the driver or not), whose
/// backend then went away.
fn crashed(
    first: &ScriptedBackend,
    ram: &GuestRam,
    rings: &Rings,
    activate: bool,
    read: bool,
) -> VhostUserDevice {
    let mut dev = VhostUserDevice::connect(
        "balloon0",
        &first.path,
        TYPE_BALLOON,
        QueueUnits(1),
        64,
        ram.memory().clone(),
    )
    .unwrap();
    if activate {
        dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    }
    if read {
        let mut seen = [0u8; 8];
        dev.read_config(0, &mut seen);
        assert_eq!(seen, SERVED);
    }
    first.kill();
    dev.backend_gone();
    dev
}

/// What the guest's driver reads of the whole space.
fn read_space(dev: &mut VhostUserDevice) -> [u8; 8] {
    let mut space = [0u8; 8];
    dev.read_config(0, &mut space);
    space
}

#[test]
fn a_new_backend_gets_the_space_the_guest_saw_before_it_is_read_again() {
    let (ram, rings) = (guest_ram(), Rings::new());
    let first = backend("restore-a", &SERVED, true, false);
    let mut dev = balloon_after_a_crash(&first, &ram, &rings, true);

    let second = backend("restore-a", &FRESH, true, false);
    dev.reconnect(UnixStream::connect(&second.path).unwrap())
        .unwrap();
    assert!(dev.link_status().is_up());
    let config: Vec<u32> = second
        .requests()
        .into_iter()
        .filter(|r| [GET_CONFIG, SET_CONFIG].contains(r))
        .collect();
    assert_eq!(
        config,
        vec![GET_CONFIG, SET_CONFIG, GET_CONFIG],
        "looked at, restored, read again"
    );
    let set = &second.messages(SET_CONFIG)[0];
    assert_eq!(
        (u32_at(set, 0), u32_at(set, 4), u32_at(set, 8)),
        (0, 8, CONFIG_LIVE_MIGRATION),
        "the whole space, flagged as a restore"
    );
    assert_eq!(&set[12..], &SERVED);
    assert_eq!(
        second.flags(SET_CONFIG)[0] & NEED_REPLY,
        NEED_REPLY,
        "acked"
    );
    assert_eq!(read_space(&mut dev), SERVED, "the driver sees no change");

    // the ack was asked for that message only: a driver's write afterwards asks none
    dev.write_config(4, &[1, 0, 0, 0]);
    second.wait_for(SET_CONFIG, 2);
    let write = &second.messages(SET_CONFIG)[1];
    assert_eq!(u32_at(write, 8), CONFIG_FRONTEND);
    assert_eq!(second.flags(SET_CONFIG)[1] & NEED_REPLY, 0);
}

#[test]
fn a_space_that_did_not_change_is_not_sent() {
    let (ram, rings) = (guest_ram(), Rings::new());
    let first = backend("restore-same", &SERVED, true, false);
    let mut dev = balloon_after_a_crash(&first, &ram, &rings, true);
    let second = backend("restore-same", &SERVED, true, false);
    dev.reconnect(UnixStream::connect(&second.path).unwrap())
        .unwrap();
    assert!(second.messages(SET_CONFIG).is_empty());
    assert_eq!(second.messages(GET_CONFIG).len(), 1);
}

#[test]
fn before_the_driver_runs_the_device_the_new_space_is_taken_as_it_is() {
    let (ram, rings) = (guest_ram(), Rings::new());
    let first = backend("restore-idle", &SERVED, true, false);
    let mut dev = balloon_after_a_crash(&first, &ram, &rings, false);
    let second = backend("restore-idle", &FRESH, true, false);
    dev.reconnect(UnixStream::connect(&second.path).unwrap())
        .unwrap();
    assert!(second.messages(SET_CONFIG).is_empty());
    assert_eq!(
        read_space(&mut dev),
        FRESH,
        "the driver will probe it afresh"
    );
}

#[test]
fn a_space_no_one_read_is_not_restored() {
    // the copy is the zeros the device started with, not what a backend served
    let (ram, rings) = (guest_ram(), Rings::new());
    let first = backend("restore-unread", &SERVED, true, false);
    let mut dev = crashed(&first, &ram, &rings, true, false);
    let second = backend("restore-unread", &SERVED, true, false);
    dev.reconnect(UnixStream::connect(&second.path).unwrap())
        .unwrap();
    assert!(second.messages(SET_CONFIG).is_empty());
    assert_eq!(read_space(&mut dev), SERVED);
}

#[test]
fn a_refused_restore_does_not_fail_the_reconnect() {
    let (ram, rings) = (guest_ram(), Rings::new());
    let first = backend("restore-refused", &SERVED, true, false);
    let mut dev = balloon_after_a_crash(&first, &ram, &rings, true);
    let second = backend("restore-refused", &FRESH, true, true);
    dev.reconnect(UnixStream::connect(&second.path).unwrap())
        .unwrap();
    assert_eq!(second.messages(SET_CONFIG).len(), 1, "tried once");
    let status = dev.link_status();
    assert!(status.is_up() && status.reconnects() == 1);
    assert_eq!(read_space(&mut dev), FRESH, "the backend's own space");
}

#[test]
fn without_reply_ack_the_restore_asks_for_no_ack() {
    let (ram, rings) = (guest_ram(), Rings::new());
    let first = backend("restore-no-ack", &SERVED, false, false);
    let mut dev = balloon_after_a_crash(&first, &ram, &rings, true);
    let second = backend("restore-no-ack", &FRESH, false, false);
    dev.reconnect(UnixStream::connect(&second.path).unwrap())
        .unwrap();
    assert_eq!(
        second.flags(SET_CONFIG),
        vec![0x1],
        "version 1, nothing asked"
    );
    assert_eq!(read_space(&mut dev), SERVED);
}

#[test]
fn without_the_config_feature_nothing_is_restored() {
    let (ram, rings) = (guest_ram(), Rings::new());
    let plain = |tag| start_with(tag, Script::new(OFFER).with_config(&SERVED));
    let first = plain("restore-no-config");
    let mut dev = crashed(&first, &ram, &rings, true, false);
    let second = plain("restore-no-config");
    dev.reconnect(UnixStream::connect(&second.path).unwrap())
        .unwrap();
    let requests = second.requests();
    assert!(
        !requests.contains(&SET_CONFIG) && !requests.contains(&GET_CONFIG),
        "{requests:?}"
    );
}
