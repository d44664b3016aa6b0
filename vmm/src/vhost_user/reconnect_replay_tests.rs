//! The device's own replay on a new connection (ring bases from the guest's used index) and
//! a backend that lacks a negotiated feature.

use std::net::Shutdown;

use super::*;
use crate::vhost_user::test_backend::{self, Rings, SET_FEATURES, SET_VRING_CALL, SET_VRING_KICK};
use crate::virtio::device_type::QueueUnits;
use crate::virtio::{F_VERSION_1, TYPE_NET};
use vm_memory::{Bytes, GuestAddress};

const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const USED: [u64; 2] = Rings::USED;

/// A net device (1 pair: rx, tx) activated on `first`.
fn activated_device(
    first: &test_backend::ScriptedBackend,
    ram: &crate::memory::GuestRam,
    rings: &Rings,
) -> VhostUserDevice {
    let mut dev = VhostUserDevice::connect(
        "net0",
        &first.path,
        TYPE_NET,
        QueueUnits(1),
        64,
        ram.memory().clone(),
    )
    .unwrap();
    dev.activate(F_VERSION_1 | F_MAC, &rings.setups()).unwrap();
    dev
}

#[test]
fn a_new_backend_gets_the_rings_from_the_guests_used_index() {
    let ram = test_backend::guest_ram();
    let rings = Rings::new();
    let offer = F_VERSION_1 | F_MAC | F_MRG_RXBUF;
    let first = test_backend::start("reconnect-a", offer);
    let mut dev = activated_device(&first, &ram, &rings);
    first.wait_for(SET_VRING_KICK, 2);
    assert_eq!(first.vring_bases(), vec![(0, 0), (1, 0)]);

    // the backend dies after completing 7 and 9 buffers
    let mem = ram.memory();
    mem.write_obj(7u16.to_le(), GuestAddress(USED[0] + 2))
        .unwrap();
    mem.write_obj(9u16.to_le(), GuestAddress(USED[1] + 2))
        .unwrap();
    first.conn.recv().unwrap().shutdown(Shutdown::Both).unwrap();
    first.thread.join().unwrap();
    assert!(dev.peer_gone());
    dev.backend_gone();
    let status = dev.link_status();
    assert!(!status.is_up());
    // meanwhile the driver's reset and a new activation only touch the vmm's records
    dev.reset();
    dev.activate(F_VERSION_1 | F_MAC, &rings.setups()).unwrap();
    for (kick, call) in &rings.fds {
        assert!(
            kick.read().is_err() && call.read().is_err(),
            "nothing signalled yet"
        );
    }

    let second = test_backend::start("reconnect-b", offer);
    let stream = UnixStream::connect(&second.path).unwrap();
    let channel = dev.reconnect(stream).unwrap();
    assert!(channel.is_none(), "the scripted backend has no BACKEND_REQ");
    second.wait_for(SET_VRING_KICK, 2);
    assert_eq!(second.vring_bases(), vec![(0, 7), (1, 9)]);
    let acked = F_VERSION_1 | F_MAC;
    assert_eq!(
        second.messages(SET_FEATURES),
        vec![acked.to_le_bytes().to_vec()]
    );
    assert_eq!(second.messages(SET_VRING_KICK).len(), 2);
    assert_eq!(second.messages(SET_VRING_CALL).len(), 2);
    for (kick, call) in &rings.fds {
        assert_eq!(
            kick.read().unwrap(),
            1,
            "one kick for work queued while down"
        );
        assert_eq!(
            call.read().unwrap(),
            1,
            "one call for completions the guest missed"
        );
    }
    assert!(status.is_up());
    assert_eq!(status.reconnects(), 1);
    assert!(status.last_outage().is_some());
    let s = dev.vhost_user_state();
    assert_eq!(
        s.vrings.iter().map(|r| r.start_base).collect::<Vec<_>>(),
        vec![7, 9]
    );
    drop(dev);
    second.thread.join().unwrap();
}

#[test]
fn a_backend_that_lacks_a_negotiated_feature_is_refused() {
    let ram = test_backend::guest_ram();
    let rings = Rings::new();
    let first = test_backend::start("refuse-a", F_VERSION_1 | F_MAC);
    let mut dev = activated_device(&first, &ram, &rings);
    first.conn.recv().unwrap().shutdown(Shutdown::Both).unwrap();
    first.thread.join().unwrap();
    dev.backend_gone();

    let older = test_backend::start("refuse-b", F_VERSION_1);
    let err = match dev.reconnect(UnixStream::connect(&older.path).unwrap()) {
        Ok(_) => panic!("a backend without MAC was taken"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("net0") && err.contains("0x20"), "{err}");
    assert!(
        !dev.link_status().is_up(),
        "still down: the next attempt may do better"
    );
    assert!(older.vring_bases().is_empty(), "no ring was started on it");
    drop(dev);
    older.thread.join().unwrap();
}
