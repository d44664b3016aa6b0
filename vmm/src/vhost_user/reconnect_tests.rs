//! The reconnect state machine against scripted backends: the link's counters, the checks a
//! new backend must pass, a hung new backend, the shared device, and the reconnect thread
//! bringing a restarted backend back on the same path.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::memory::GuestRam;
use crate::vhost_user::test_backend::*;
use crate::vhost_user::F_PROTOCOL_FEATURES;
use crate::virtio::pci::test_utils::test_transport;
use crate::virtio::{F_VERSION_1, TYPE_NET};

const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;

/// A net device (one pair: rx, tx, queues of 64) on `backend`.
fn net(backend: &ScriptedBackend, ram: &GuestRam) -> VhostUserDevice {
    crate::vhost_user::test_backend::net_device(backend, ram, 64)
}

/// The backend dies and the device notices.
fn gone(dev: &mut VhostUserDevice, backend: &ScriptedBackend) {
    backend.kill();
    assert!(dev.peer_gone());
    dev.backend_gone();
}

/// Reconnect `dev` to `backend`, which must refuse; what the refusal says.
fn refused(dev: &mut VhostUserDevice, backend: &ScriptedBackend) -> String {
    let err = match dev.reconnect(UnixStream::connect(&backend.path).unwrap()) {
        Ok(_) => panic!("the device took a backend it should have refused"),
        Err(e) => e.to_string(),
    };
    backend.wait_closed(); // the backend must see us go
    assert!(!dev.link_status().is_up(), "still down: {err}");
    assert_eq!(dev.link_status().reconnects(), 0);
    err
}

#[test]
fn the_link_counts_outages_and_reconnects() {
    let ram = guest_ram();
    let offer = F_VERSION_1 | F_MAC;
    let mut backend = start("count", offer);
    let mut dev = net(&backend, &ram);
    let status = dev.link_status();
    assert!(status.is_up());
    assert_eq!((status.reconnects(), status.last_outage()), (0, None));

    for n in 1..=2 {
        let before = Instant::now();
        gone(&mut dev, &backend);
        let since = dev.link.down_since;
        assert!(since.is_some());
        dev.backend_gone(); // seen again (a failed call, the watch): still the same outage
        assert_eq!(dev.link.down_since, since);
        assert!(!status.is_up());

        backend = start("count", offer); // restarted, on the same path
        let channel = dev
            .reconnect(UnixStream::connect(&backend.path).unwrap())
            .unwrap();
        assert!(channel.is_none(), "no BACKEND_REQ offered");
        assert!(status.is_up());
        assert_eq!(status.reconnects(), n);
        let outage = status.last_outage().expect("the outage was measured");
        assert!(outage <= before.elapsed(), "{outage:?}");
        assert_eq!(
            backend.requests(),
            vec![SET_OWNER, GET_FEATURES],
            "not activated: no rings"
        );
    }
}

#[test]
fn before_the_driver_starts_a_new_backend_needs_every_feature_offered() {
    let ram = guest_ram();
    let first = start("offered", F_VERSION_1 | F_MAC | F_MRG_RXBUF);
    let mut dev = net(&first, &ram);
    gone(&mut dev, &first);
    let fewer = start("offered", F_VERSION_1 | F_MAC);
    let err = refused(&mut dev, &fewer);
    assert!(err.contains("0x8000") && err.contains("net0"), "{err}");
    let same = start(
        "offered",
        F_VERSION_1 | F_MAC | F_MRG_RXBUF | F_PROTOCOL_FEATURES,
    );
    dev.reconnect(UnixStream::connect(&same.path).unwrap())
        .unwrap();
    assert!(dev.link_status().is_up(), "offering more is fine");
}

#[test]
fn a_new_backend_with_other_protocol_features_is_refused() {
    let ram = guest_ram();
    let features = F_VERSION_1 | F_PROTOCOL_FEATURES;
    let first = start_mq("protocol-a", features, 2);
    let mut dev = net(&first, &ram);
    gone(&mut dev, &first);
    let err = refused(&mut dev, &start("protocol-b", features));
    assert!(err.contains("protocol features"), "{err}");
}

#[test]
fn a_new_backend_serving_fewer_queues_is_refused() {
    let ram = guest_ram();
    let features = F_VERSION_1 | F_PROTOCOL_FEATURES;
    let first = start_mq("queues-a", features, 2);
    let mut dev = net(&first, &ram);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    gone(&mut dev, &first);
    let err = refused(&mut dev, &start_mq("queues-b", features, 1));
    assert!(err.contains("serves 1 queues, the device has 2"), "{err}");
}

/// A backend offering CONFIGURE_MEM_SLOTS with `slots` slots.
fn mem_slots(tag: &str, slots: u64) -> ScriptedBackend {
    let script = Script {
        protocol: PROTOCOL_F_CONFIGURE_MEM_SLOTS,
        max_mem_slots: slots,
        ..Script::new(F_VERSION_1 | F_PROTOCOL_FEATURES | F_MAC)
    };
    start_with(tag, script)
}

#[test]
fn a_new_backend_that_cannot_take_the_rings_leaves_the_device_down() {
    let ram = guest_ram();
    let rings = Rings::new();
    let first = mem_slots("replay", 8);
    let mut dev = net(&first, &ram);
    dev.activate(F_VERSION_1 | F_MAC, &rings.setups()).unwrap();
    gone(&mut dev, &first);

    let err = refused(&mut dev, &mem_slots("replay", 0));
    assert!(err.contains("at most 0"), "{err}");

    let good = mem_slots("replay", 8);
    dev.reconnect(UnixStream::connect(&good.path).unwrap())
        .unwrap();
    good.wait_for(SET_VRING_ENABLE, 2);
    assert_eq!(
        good.messages(ADD_MEM_REG).len(),
        1,
        "a new connection gets the regions"
    );
    assert!(dev.link_status().is_up());
}

#[test]
fn a_new_backend_whose_config_cannot_be_read_is_refused() {
    let ram = guest_ram();
    let with_config = |tag, config: &[u8]| {
        let script = Script {
            protocol: PROTOCOL_F_CONFIG,
            ..Script::new(F_VERSION_1 | F_PROTOCOL_FEATURES | F_MAC)
        };
        start_with(tag, script.with_config(config))
    };
    let first = with_config("config-a", &[1; 12]);
    let mut dev = net(&first, &ram);
    gone(&mut dev, &first);
    let err = refused(&mut dev, &with_config("config-b", &[]));
    assert!(err.contains("GET_CONFIG failed"), "{err}");

    let good = with_config("config-c", &[7; 12]);
    dev.reconnect(UnixStream::connect(&good.path).unwrap())
        .unwrap();
    assert_eq!(
        good.messages(GET_CONFIG).len(),
        1,
        "read at once, for the copy"
    );
    good.kill();
    dev.backend_gone();
    let mut data = [0u8; 12];
    dev.read_config(0, &mut data);
    assert_eq!(
        data, [7; 12],
        "the new backend's space, served while it is away"
    );
}

#[test]
fn a_new_backend_that_hangs_in_the_handshake_is_given_up_in_time() {
    let ram = guest_ram();
    let first = start("hung-a", F_VERSION_1 | F_MAC);
    let mut dev = net(&first, &ram);
    gone(&mut dev, &first);
    let hung = start("hung-b", F_VERSION_1 | F_MAC);
    hung.hang_on(GET_FEATURES);
    dev.call_timeout = Duration::from_millis(100);
    let start = Instant::now();
    let err = refused(&mut dev, &hung);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(err.contains("GET_FEATURES"), "{err}");
}

#[test]
fn the_shared_device_answers_for_its_device_even_after_a_panic_under_the_lock() {
    let ram = guest_ram();
    let rings = Rings::new();
    let backend = start("shared", F_VERSION_1 | F_PROTOCOL_FEATURES | F_MAC);
    let inner = Arc::new(Mutex::new(net(&backend, &ram)));
    let poisoner = inner.clone();
    let _ = std::thread::spawn(move || {
        let _held = poisoner.lock().unwrap();
        panic!("a thread panics holding the device (expected by this test)");
    })
    .join();
    assert!(inner.is_poisoned());

    let mut shared = SharedVhostUser(inner);
    assert_eq!(shared.device_type(), TYPE_NET);
    assert_eq!(shared.queue_max_sizes(), vec![64, 64]);
    assert_eq!(shared.features(), F_VERSION_1 | F_MAC);
    let mut data = [0xffu8; 4];
    shared.read_config(0, &mut data);
    assert_eq!(data, [0; 4], "no CONFIG");
    shared.write_config(0, &data);
    shared
        .activate(F_VERSION_1 | F_MAC, &rings.setups())
        .unwrap();
    backend.wait_for(SET_VRING_ENABLE, 2);
    shared.reset();
    assert_eq!(backend.messages(GET_VRING_BASE).len(), 2);
    let VirtioDeviceState::VhostUser(state) = shared.state() else {
        panic!("not a vhost-user state");
    };
    let stops: Vec<_> = state.vrings.iter().map(|r| r.stop_base).collect();
    assert_eq!(stops, vec![Some(100), Some(101)]);
}

/// The vmm's whole sequence: a backend dies, a restarted one that lacks a feature is refused,
/// the next one on the same path gets the rings from the guest's used indices, its config is
/// read and its request channel is served. (The reconnect thread runs for as long as the
/// process: it outlives this test, holding the last backend's connection.)
#[test]
fn the_reconnect_thread_brings_a_restarted_backend_back() {
    let ram = guest_ram();
    let rings = Rings::new();
    let tag = "thread";
    let script = |features, config: &[u8]| {
        let script = Script {
            protocol: PROTOCOL_F_BACKEND_REQ | PROTOCOL_F_CONFIG,
            ..Script::new(features | F_VERSION_1 | F_PROTOCOL_FEATURES)
        };
        script.with_config(config)
    };
    let first = start_with(tag, script(F_MAC, &[1; 12]));
    let mut dev = net(&first, &ram);
    let status = dev.link_status();
    let channel = dev.take_backend_channel().expect("a request channel");
    let dev = Arc::new(Mutex::new(dev));
    let transport = Arc::new(Mutex::new(test_transport(&[64, 64]).0));
    channel.spawn(transport.clone()).unwrap();
    let mut shared = SharedVhostUser(dev.clone());
    shared
        .activate(F_VERSION_1 | F_MAC, &rings.setups())
        .unwrap();
    first.wait_for(SET_VRING_ENABLE, 2);
    spawn("net0".into(), first.path.clone(), dev, transport.clone()).unwrap();
    assert_eq!(Arc::strong_count(&transport), 3, "the test, two threads");

    // the backend completed 3 and 5 buffers, and dies
    let mem = ram.memory();
    mem.write_obj(3u16.to_le(), GuestAddress(Rings::USED[0] + 2))
        .unwrap();
    mem.write_obj(5u16.to_le(), GuestAddress(Rings::USED[1] + 2))
        .unwrap();
    first.kill();
    wait_until("the link to go down", || !status.is_up());
    wait_until("the old request channel to end", || {
        Arc::strong_count(&transport) == 2
    });

    let older = start_with(tag, script(0, &[2; 12]));
    older.wait_closed(); // tried and refused
    assert!(!status.is_up());
    assert_eq!(status.reconnects(), 0);
    assert!(older.vring_bases().is_empty());

    let next = start_with(tag, script(F_MAC, &[3; 12]));
    wait_until("the link to come back", || status.is_up());
    assert_eq!(status.reconnects(), 1);
    assert!(status.last_outage().is_some());
    next.wait_for(SET_VRING_ENABLE, 2);
    assert_eq!(next.vring_bases(), vec![(0, 3), (1, 5)]);
    for (kick, call) in &rings.fds {
        assert_eq!(
            kick.read().unwrap(),
            1,
            "a kick for what was queued meanwhile"
        );
        assert_eq!(
            call.read().unwrap(),
            1,
            "a call for what may have been missed"
        );
    }
    let mut data = [0u8; 12];
    shared.read_config(0, &mut data);
    assert_eq!(data, [3; 12]);

    wait_until("the new request channel", || {
        Arc::strong_count(&transport) == 3
    });
    let mut theirs = next.backend_channel();
    std::io::Write::write_all(&mut theirs, &config_change_msg(0)).unwrap();
    wait_until("the config interrupt", || config_interrupt(&transport));
    let _ = std::fs::remove_file(&next.path);
}

#[test]
fn a_backend_back_while_a_snapshot_reads_memory_gets_its_rings_only_at_the_resume() {
    let ram = guest_ram();
    let rings = Rings::new();
    let first = mem_slots("suspended", 8);
    let mut dev = net(&first, &ram);
    dev.activate(F_VERSION_1 | F_MAC, &rings.setups()).unwrap();
    dev.suspend().expect("rings stopped");
    gone(&mut dev, &first);

    let second = mem_slots("suspended", 8);
    dev.reconnect(UnixStream::connect(&second.path).unwrap())
        .unwrap();
    assert!(dev.link_status().is_up());
    assert!(
        second.messages(SET_VRING_BASE).is_empty(),
        "no ring may run while the snapshot reads guest memory: {:?}",
        second.requests()
    );
    dev.resume_suspended().expect("rings started");
    second.wait_for(SET_VRING_ENABLE, 2);
    // each where the first backend's GET_VRING_BASE stopped it (100 + index)
    let bases: Vec<Vec<u8>> = second.messages(SET_VRING_BASE);
    assert_eq!(bases.len(), 2, "{:?}", second.requests());
    for (i, body) in bases.iter().enumerate() {
        let num = u32::from_le_bytes(body[4..8].try_into().unwrap());
        assert_eq!(num, 100 + i as u32, "ring {i}");
    }
}
