//! The frontend against a scripted backend: each handshake variant, activation, reset, and a
//! backend that does not answer. (The config space and the backend's channel are in
//! `config_space_tests`.)

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::test_backend::*;
use super::*;
use crate::memory::GuestRam;
use crate::virtio::pci::MAX_QUEUES;
use crate::virtio::{VirtioDevice, F_VERSION_1, TYPE_BLOCK};

const F_BLK_SIZE: u64 = 1 << 6;
const F_MAC: u64 = 1 << 5;

/// A net device (one pair: rx, tx, queues of 256) on `backend`.
fn net(backend: &ScriptedBackend, ram: &GuestRam) -> VhostUserDevice {
    crate::vhost_user::test_backend::net_device(backend, ram, 256)
}

#[test]
fn a_backend_without_protocol_features_gets_the_plain_sequence() {
    let ram = test_backend::guest_ram();
    let backend = start("plain", F_VERSION_1 | F_BLK_SIZE);
    let mut dev = blk(&backend, 2, &ram);
    assert_eq!(backend.requests(), vec![SET_OWNER, GET_FEATURES]);
    assert_eq!(dev.features(), F_VERSION_1 | F_BLK_SIZE);
    assert_eq!(dev.queue_max_sizes(), vec![128, 128]);
    assert!(dev.take_backend_channel().is_none());

    // no CONFIG: the space reads as zeros and writes go nowhere
    let mut data = [0xffu8; 8];
    dev.read_config(0, &mut data);
    assert_eq!(data, [0; 8]);
    dev.write_config(0, &[1, 2, 3, 4]);

    let rings = Rings::new();
    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    backend.wait_for(SET_VRING_KICK, 2);
    // no PROTOCOL_FEATURES: no SET_VRING_ENABLE (the rings start enabled), nothing else
    let ring = [
        SET_VRING_NUM,
        SET_VRING_ADDR,
        SET_VRING_BASE,
        SET_VRING_CALL,
        SET_VRING_KICK,
    ];
    let mut expected = vec![SET_OWNER, GET_FEATURES, SET_FEATURES, SET_MEM_TABLE];
    expected.extend(ring.iter().chain(&ring));
    assert_eq!(backend.requests(), expected);
    assert_eq!(
        backend.messages(SET_FEATURES),
        vec![F_VERSION_1.to_le_bytes()]
    );
    drop(dev);
    backend.thread.join().unwrap();
}

#[test]
fn the_handshake_takes_only_the_protocol_features_it_uses() {
    let ram = test_backend::guest_ram();
    let offered = PROTOCOL_F_MQ
        | PROTOCOL_F_REPLY_ACK
        | PROTOCOL_F_BACKEND_REQ
        | PROTOCOL_F_CONFIG
        | PROTOCOL_F_CONFIGURE_MEM_SLOTS
        | PROTOCOL_F_INFLIGHT_SHMFD
        | PROTOCOL_F_LOG_SHMFD
        | PROTOCOL_F_HOST_NOTIFIER;
    let backend = start_with(
        "protocol",
        Script {
            protocol: offered,
            queue_num: 3,
            ..Script::new(F_VERSION_1 | F_PROTOCOL_FEATURES | F_MAC)
        },
    );
    let mut dev = net(&backend, &ram);
    backend.wait_for(SET_BACKEND_REQ_FD, 1); // it has no reply
    assert_eq!(
        backend.requests(),
        vec![
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            GET_QUEUE_NUM,
            SET_BACKEND_REQ_FD,
        ]
    );
    let wanted = offered & !PROTOCOL_F_HOST_NOTIFIER;
    assert_eq!(
        backend.messages(SET_PROTOCOL_FEATURES),
        vec![wanted.to_le_bytes()]
    );
    assert_eq!(dev.vhost_user_state().protocol_features, wanted);
    assert_eq!(
        backend.fds(SET_BACKEND_REQ_FD)[0].len(),
        1,
        "the channel's end"
    );
    assert_eq!(
        dev.features(),
        F_VERSION_1 | F_MAC,
        "not the vhost-user bit"
    );
    assert_eq!(
        dev.queue_max_sizes(),
        vec![256; 3],
        "net takes the backend's count"
    );
    assert!(dev.take_backend_channel().is_some());
    assert!(dev.take_backend_channel().is_none(), "handed out once");
}

#[test]
fn a_backend_without_version_1_is_refused() {
    let ram = test_backend::guest_ram();
    let backend = start("no-v1", F_PROTOCOL_FEATURES | F_BLK_SIZE);
    let err = VhostUserDevice::connect(
        "blk0",
        &backend.path,
        TYPE_BLOCK,
        QueueUnits(1),
        128,
        ram.memory().clone(),
    );
    match err {
        Err(e @ FrontendError::MissingFeature { feature, .. }) => {
            assert_eq!(feature, "VIRTIO_F_VERSION_1");
            let text = e.to_string();
            assert!(
                text.contains("blk0") && text.contains("vmm-no-v1"),
                "{text}"
            );
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a backend without VERSION_1 was taken"),
    }
    assert_eq!(backend.requests(), vec![SET_OWNER, GET_FEATURES]);
    backend.thread.join().unwrap();
}

#[test]
fn a_socket_nobody_listens_on_is_refused_after_a_few_tries() {
    let ram = test_backend::guest_ram();
    let path = socket_path("nobody");
    let _ = std::fs::remove_file(&path);
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // the file stays
    let start = Instant::now();
    let err = VhostUserDevice::connect(
        "blk0",
        &path,
        TYPE_BLOCK,
        QueueUnits(1),
        128,
        ram.memory().clone(),
    );
    let waited = start.elapsed();
    let _ = std::fs::remove_file(&path);
    match err {
        Err(FrontendError::Protocol { step, .. }) => assert_eq!(step, "connect"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("connected to nobody"),
    }
    assert!(
        waited >= Duration::from_millis(500),
        "five retries, 100 ms apart: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[test]
fn the_socket_is_waited_for_until_it_appears_or_the_wait_ends() {
    let path = socket_path("appears");
    let _ = std::fs::remove_file(&path);
    let start = Instant::now();
    assert!(!wait_for_socket(&path, Duration::from_millis(60)));
    assert!(start.elapsed() >= Duration::from_millis(60));

    let creator = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::File::create(&path).unwrap();
        })
    };
    assert!(
        wait_for_socket(&path, Duration::from_secs(5)),
        "it appeared"
    );
    creator.join().unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn activation_sends_the_memory_table_then_each_ring_in_order() {
    let ram = test_backend::guest_ram();
    let mem = ram.memory();
    let backend = start("activate", F_VERSION_1 | F_PROTOCOL_FEATURES | F_MAC);
    let mut dev = net(&backend, &ram);
    backend.wait_for(SET_PROTOCOL_FEATURES, 1); // the handshake's last message has no reply
    let handshake = backend.requests().len();
    let rings = Rings::new();
    let setups = rings.setups();
    dev.activate(F_VERSION_1 | F_MAC, &setups).unwrap();
    backend.wait_for(SET_VRING_ENABLE, 2);

    let ring = RING_SETUP;
    let mut expected = vec![SET_FEATURES, SET_MEM_TABLE];
    expected.extend(ring.iter().chain(&ring));
    assert_eq!(backend.requests()[handshake..], expected[..]);
    let acked = F_VERSION_1 | F_MAC | F_PROTOCOL_FEATURES;
    assert_eq!(backend.messages(SET_FEATURES), vec![acked.to_le_bytes()]);

    // one region, the whole RAM, with the memfd it lives in
    let table = &backend.messages(SET_MEM_TABLE)[0];
    assert_eq!(u32_at(table, 0), 1, "one region");
    let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    assert_eq!(u64_at(table, 8), 0, "guest address");
    assert_eq!(u64_at(table, 16), 64 << 20, "size");
    assert_eq!(u64_at(table, 24), host(0), "the vmm's address");
    let mut fds = backend.fds(SET_MEM_TABLE);
    let memfd = fds[0].pop().expect("the region's descriptor");
    assert!(fds[0].is_empty(), "one descriptor per region");
    mem.write_obj(0x5eed_u32, GuestAddress(0x2_0000)).unwrap();
    let mut seen = [0u8; 4];
    memfd
        .read_exact_at(&mut seen, u64_at(table, 32) + 0x2_0000)
        .unwrap();
    assert_eq!(
        u32::from_le_bytes(seen),
        0x5eed,
        "the descriptor maps guest RAM"
    );

    for (i, q) in setups.iter().enumerate() {
        let num = &backend.messages(SET_VRING_NUM)[i];
        assert_eq!((u32_at(num, 0), u32_at(num, 4)), (i as u32, 64));
        let addr = &backend.messages(SET_VRING_ADDR)[i];
        assert_eq!((u32_at(addr, 0), u32_at(addr, 4)), (i as u32, 0));
        assert_eq!(u64_at(addr, 8), host(q.desc), "descriptor table");
        assert_eq!(u64_at(addr, 16), host(q.used), "used ring");
        assert_eq!(u64_at(addr, 24), host(q.avail), "available ring");
        let enable = &backend.messages(SET_VRING_ENABLE)[i];
        assert_eq!((u32_at(enable, 0), u32_at(enable, 4)), (i as u32, 1));
        // the descriptors sent are the driver's eventfds
        for (request, ours) in [(SET_VRING_KICK, q.kick), (SET_VRING_CALL, q.call)] {
            assert_eq!(u64_at(&backend.messages(request)[i], 0), i as u64);
            let mut theirs = backend.fds(request).remove(i).pop().expect("an eventfd");
            theirs.write_all(&(i as u64 + 5).to_ne_bytes()).unwrap();
            assert_eq!(ours.read().unwrap(), i as u64 + 5);
        }
    }
    assert_eq!(backend.vring_bases(), vec![(0, 0), (1, 0)]);
    let s = dev.vhost_user_state();
    assert!(s.vrings.iter().all(|r| r.running && r.start_base == 0));
    assert!(!s.memory_regions_added, "SET_MEM_TABLE, not ADD_MEM_REG");
}

#[test]
fn with_mem_slots_each_region_is_added_once_per_connection() {
    let ram = test_backend::guest_ram();
    let backend = start_with(
        "mem-slots",
        Script {
            protocol: PROTOCOL_F_CONFIGURE_MEM_SLOTS,
            max_mem_slots: 8,
            ..Script::new(F_VERSION_1 | F_PROTOCOL_FEATURES)
        },
    );
    let mut dev = blk(&backend, 2, &ram);
    let rings = Rings::new();
    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    backend.wait_for(SET_VRING_ENABLE, 2);
    assert_eq!(backend.messages(GET_MAX_MEM_SLOTS).len(), 1);
    let region = &backend.messages(ADD_MEM_REG)[0];
    assert_eq!((u64_at(region, 8), u64_at(region, 16)), (0, 64 << 20));
    assert_eq!(backend.fds(ADD_MEM_REG)[0].len(), 1);
    assert!(backend.messages(SET_MEM_TABLE).is_empty());
    assert!(dev.vhost_user_state().memory_regions_added);

    // the driver resets and starts again: the backend still has the regions
    dev.reset();
    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    backend.wait_for(SET_VRING_ENABLE, 4);
    assert_eq!(backend.messages(SET_FEATURES).len(), 2);
    assert_eq!(backend.messages(GET_MAX_MEM_SLOTS).len(), 1);
    assert_eq!(backend.messages(ADD_MEM_REG).len(), 1);
}

#[test]
fn a_backend_with_too_few_memory_slots_fails_the_activation() {
    let ram = test_backend::guest_ram();
    let backend = start_with(
        "no-slots",
        Script {
            protocol: PROTOCOL_F_CONFIGURE_MEM_SLOTS,
            max_mem_slots: 0,
            ..Script::new(F_VERSION_1 | F_PROTOCOL_FEATURES)
        },
    );
    let mut dev = blk(&backend, 1, &ram);
    let rings = Rings::new();
    let err = dev.activate(F_VERSION_1, &rings.setups()[..1]).unwrap_err();
    assert!(
        err.contains("1 regions") && err.contains("at most 0"),
        "{err}"
    );
    assert!(
        dev.link_status().is_up(),
        "the backend answered; it is not gone"
    );
    assert!(backend.messages(ADD_MEM_REG).is_empty());
    assert!(dev.vhost_user_state().vrings.is_empty());
}

#[test]
fn a_ring_outside_guest_memory_fails_the_activation() {
    let ram = test_backend::guest_ram();
    let backend = start("ring-outside", F_VERSION_1);
    let mut dev = blk(&backend, 1, &ram);
    let rings = Rings::new();
    let mut setups = rings.setups();
    setups.truncate(1);
    setups[0].used = 0x1_0000_0000;
    let err = dev.activate(F_VERSION_1, &setups).unwrap_err();
    assert!(
        err.contains("used ring") && err.contains("0x100000000"),
        "{err}"
    );
    assert!(dev.link_status().is_up());
    backend.wait_for(SET_MEM_TABLE, 1);
    drop(dev);
    backend.wait_closed();
    assert!(
        backend.messages(SET_VRING_NUM).is_empty(),
        "no ring was started"
    );
}

#[test]
fn an_activation_on_a_dead_backend_waits_for_the_next_connection() {
    let ram = test_backend::guest_ram();
    let backend = start("dead-activate", F_VERSION_1);
    let mut dev = blk(&backend, 2, &ram);
    backend.kill();
    let rings = Rings::new();
    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    assert!(
        !dev.link_status().is_up(),
        "the failed call took the link down"
    );
    assert_eq!(dev.ring_setups.len(), 2, "kept for the next connection");
    assert_eq!(dev.vhost_user_state().acked_features, F_VERSION_1);
}

#[test]
fn reset_stops_each_running_ring_once() {
    let ram = test_backend::guest_ram();
    let backend = start("reset", F_VERSION_1 | F_PROTOCOL_FEATURES);
    let mut dev = blk(&backend, 2, &ram);
    let rings = Rings::new();
    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    dev.reset();
    let asked: Vec<u32> = backend
        .messages(GET_VRING_BASE)
        .iter()
        .map(|p| u32_at(p, 0))
        .collect();
    assert_eq!(asked, vec![0, 1]);
    let stops: Vec<_> = dev
        .vhost_user_state()
        .vrings
        .iter()
        .map(|r| (r.running, r.stop_base))
        .collect();
    assert_eq!(stops, vec![(false, Some(100)), (false, Some(101))]);
    dev.reset();
    assert_eq!(
        backend.messages(GET_VRING_BASE).len(),
        2,
        "nothing runs any more"
    );
    assert!(dev.link_status().is_up());
}

#[test]
fn a_reset_the_backend_does_not_answer_closes_the_connection_in_time() {
    let ram = test_backend::guest_ram();
    let backend = start("reset-hung", F_VERSION_1);
    let mut dev = blk(&backend, 2, &ram);
    let rings = Rings::new();
    dev.activate(F_VERSION_1, &rings.setups()).unwrap();
    backend.hang_on(GET_VRING_BASE);
    dev.call_timeout = Duration::from_millis(100);
    let start = Instant::now();
    dev.reset();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(!dev.link_status().is_up());
    let s = dev.vhost_user_state();
    assert!(s.vrings.iter().all(|r| !r.running && r.stop_base.is_none()));
    backend.thread.join().unwrap(); // the connection was closed under it
}

#[test]
fn a_backend_that_never_answers_fails_the_connect_after_call_timeout() {
    let ram = test_backend::guest_ram();
    let backend = start("connect-hung", F_VERSION_1);
    backend.hang_on(GET_FEATURES);
    let start = Instant::now();
    let err = VhostUserDevice::connect(
        "blk0",
        &backend.path,
        TYPE_BLOCK,
        QueueUnits(1),
        128,
        ram.memory().clone(),
    );
    let waited = start.elapsed();
    match err {
        Err(FrontendError::Protocol { step, .. }) => assert_eq!(step, "GET_FEATURES"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("connected to a backend that never answered"),
    }
    let timeout = reconnect::CALL_TIMEOUT;
    assert!(waited >= timeout - Duration::from_millis(50), "{waited:?}");
    assert!(waited < timeout + Duration::from_secs(2), "{waited:?}");
    backend.thread.join().unwrap();
}

fn connect_to(backend: &ScriptedBackend) -> Result<VhostUserDevice, FrontendError> {
    let ram = guest_ram();
    let dev = VhostUserDevice::connect(
        "blk0",
        &backend.path,
        TYPE_BLOCK,
        QueueUnits(2),
        128,
        ram.memory().clone(),
    );
    let _ = std::fs::remove_file(&backend.path);
    dev
}

#[test]
fn a_backend_serving_more_queues_than_its_type_takes_is_refused() {
    let features = F_VERSION_1 | F_PROTOCOL_FEATURES;
    let ram = test_backend::guest_ram();
    // within the transport's 255, beyond what a net (64 pairs + control) or balloon takes
    for (tag, kind, count, max) in [
        ("net-200", crate::virtio::TYPE_NET, 200, 129),
        ("balloon-6", crate::virtio::TYPE_BALLOON, 6, 5),
    ] {
        let backend = start_mq(tag, features, count);
        match connect_as(&backend, &ram, kind) {
            Err(e @ FrontendError::QueueCount { .. }) => {
                let msg = e.to_string();
                let expected =
                    format!("serves {count} queues; a device of its type takes 1 to {max}");
                assert!(msg.contains(&expected) && msg.contains("dev0"), "{msg}");
            }
            Err(e) => panic!("{tag}: {e}"),
            Ok(_) => panic!("{tag}: taken"),
        }
    }
    let backend = start_mq("net-129", features, 129);
    let dev = connect_as(&backend, &ram, crate::virtio::TYPE_NET);
    assert_eq!(
        dev.expect("64 pairs and a control queue").queue_sizes.len(),
        129
    );
}

/// A device `dev0` of virtio type `kind` (one unit, queues of 256) on `backend`.
fn connect_as(
    backend: &ScriptedBackend,
    ram: &GuestRam,
    kind: u32,
) -> Result<VhostUserDevice, FrontendError> {
    VhostUserDevice::connect(
        "dev0",
        &backend.path,
        kind,
        QueueUnits(1),
        256,
        ram.memory().clone(),
    )
}

#[test]
fn a_backend_queue_count_the_transport_cannot_serve_is_refused() {
    let features = F_VERSION_1 | F_PROTOCOL_FEATURES;
    for count in [0, MAX_QUEUES as u64 + 1, 0x8000] {
        let backend = start_mq(&format!("queues-{count}"), features, count);
        match connect_to(&backend) {
            Err(FrontendError::QueueCount { count: c, max, .. }) => {
                assert_eq!((c, max), (count, MAX_QUEUES))
            }
            Err(e) => panic!("{count} queues: {e}"),
            Ok(_) => panic!("a backend serving {count} queues was taken"),
        }
    }
    let backend = start_mq("queues-4", features, 4);
    let dev = connect_to(&backend).expect("a backend serving 4 queues");
    assert_eq!(
        dev.queue_sizes.len(),
        2,
        "blk takes the two queues it asked for"
    );
}
