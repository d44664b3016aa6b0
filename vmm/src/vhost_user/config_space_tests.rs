//! The config space through the frontend (read whole, served from the last copy while the
//! backend is away or fails) and the backend's own channel (CONFIG_CHANGE_MSG).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::test_backend::*;
use super::*;
use crate::memory::GuestRam;
use crate::virtio::pci::test_utils::test_transport;
use crate::virtio::pci::VirtioPciDevice;
use crate::virtio::{VirtioDevice, F_VERSION_1};

/// A blk device on a backend with CONFIG whose config space is 0, 1, 2, … 59.
fn blk_with_config(tag: &str) -> (ScriptedBackend, VhostUserDevice, GuestRam) {
    let ram = test_backend::guest_ram();
    let space: Vec<u8> = (0..60).collect();
    let backend = start_with(
        tag,
        Script {
            protocol: PROTOCOL_F_CONFIG,
            ..Script::new(F_VERSION_1 | F_PROTOCOL_FEATURES)
        }
        .with_config(&space),
    );
    let dev = blk(&backend, 1, &ram);
    (backend, dev, ram)
}

#[test]
fn config_reads_fetch_the_whole_space_and_writes_go_to_the_backend() {
    let (backend, mut dev, _ram) = blk_with_config("config");
    let mut data = [0u8; 4];
    dev.read_config(8, &mut data);
    assert_eq!(data, [8, 9, 10, 11]);
    let get = &backend.messages(GET_CONFIG)[0];
    let flags = VhostUserConfigFlags::WRITABLE.bits();
    assert_eq!(
        (u32_at(get, 0), u32_at(get, 4), u32_at(get, 8)),
        (0, 60, flags)
    );

    // beyond the space: zeros, without asking
    let mut past = [0xffu8; 4];
    dev.read_config(58, &mut past);
    assert_eq!(past, [0; 4]);
    assert_eq!(backend.messages(GET_CONFIG).len(), 1);

    dev.write_config(20, &[0xaa, 0xbb]);
    backend.wait_for(SET_CONFIG, 1);
    let set = &backend.messages(SET_CONFIG)[0];
    assert_eq!(
        (u32_at(set, 0), u32_at(set, 4), u32_at(set, 8)),
        (20, 2, CONFIG_FRONTEND),
        "a driver's write has the spec's FRONTEND type (0), which libvhost-user takes"
    );
    assert_eq!(&set[12..], &[0xaa, 0xbb]);
    // the backend changes its space by itself too: every read while up is fresh
    backend.script.config.lock().unwrap()[21] = 0xcc;
    let mut data = [0u8; 3];
    dev.read_config(19, &mut data);
    assert_eq!(data, [19, 0xaa, 0xcc]);
}

#[test]
fn while_the_backend_is_away_config_reads_come_from_the_last_copy() {
    let (backend, mut dev, _ram) = blk_with_config("config-away");
    let mut data = [0u8; 2];
    dev.read_config(4, &mut data);
    backend.kill();
    dev.backend_gone();
    let mut again = [0u8; 2];
    dev.read_config(4, &mut again);
    assert_eq!(again, [4, 5], "served from the copy");
    dev.write_config(4, &[9]);
    assert_eq!(
        backend.messages(GET_CONFIG).len(),
        1,
        "nothing sent while down"
    );
    assert!(backend.messages(SET_CONFIG).is_empty());
}

#[test]
fn a_failed_config_read_takes_the_link_down_and_reads_the_last_copy() {
    let (backend, mut dev, _ram) = blk_with_config("config-fails");
    let mut data = [0u8; 2];
    dev.read_config(30, &mut data);
    backend.script.config.lock().unwrap().clear(); // GET_CONFIG now answers size 0
    let mut again = [0u8; 2];
    dev.read_config(30, &mut again);
    assert_eq!(again, [30, 31]);
    assert!(!dev.link_status().is_up());
    backend.thread.join().unwrap(); // the connection was closed
}

#[test]
fn a_config_read_the_backend_does_not_answer_returns_in_time() {
    let (backend, mut dev, _ram) = blk_with_config("config-hung");
    let mut data = [0u8; 2];
    dev.read_config(40, &mut data);
    backend.hang_on(GET_CONFIG);
    dev.call_timeout = Duration::from_millis(100);
    let start = Instant::now();
    let mut again = [0u8; 2];
    dev.read_config(40, &mut again);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(again, [40, 41], "the last copy");
    assert!(!dev.link_status().is_up());
    backend.thread.join().unwrap();
}

/// A blk device whose backend has a request channel (and REPLY_ACK if `reply_ack`), the
/// channel served on a test transport, and the backend's end of the channel.
fn channel_device(
    tag: &str,
    reply_ack: bool,
) -> (
    ScriptedBackend,
    VhostUserDevice,
    Arc<Mutex<VirtioPciDevice>>,
    UnixStream,
) {
    let ram = test_backend::guest_ram();
    let ack = if reply_ack { PROTOCOL_F_REPLY_ACK } else { 0 };
    let backend = start_with(
        tag,
        Script {
            protocol: PROTOCOL_F_BACKEND_REQ | ack,
            ..Script::new(F_VERSION_1 | F_PROTOCOL_FEATURES)
        },
    );
    let mut dev = blk(&backend, 1, &ram);
    let transport = Arc::new(Mutex::new(test_transport(&[64]).0));
    let channel = dev.take_backend_channel().expect("a request channel");
    channel.spawn(transport.clone()).unwrap();
    let theirs = backend.backend_channel();
    theirs
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (backend, dev, transport, theirs)
}

#[test]
fn a_config_change_from_the_backend_interrupts_the_driver_and_is_acked() {
    let (backend, mut dev, transport, mut theirs) = channel_device("channel-ack", true);
    assert!(!config_interrupt(&transport));
    theirs.write_all(&config_change_msg(NEED_REPLY)).unwrap();
    let mut ack = [0u8; 20];
    theirs.read_exact(&mut ack).unwrap();
    assert_eq!(
        (u32_at(&ack, 0), u32_at(&ack, 4) & 0x7, u32_at(&ack, 8)),
        (2, 0x5, 8)
    );
    assert_eq!(u64_at(&ack, 12), 0, "success");
    assert!(config_interrupt(&transport), "the driver was told");

    // the backend goes away: the channel's thread lets go of the transport
    assert_eq!(
        Arc::strong_count(&transport),
        2,
        "the channel's thread holds it"
    );
    backend.kill();
    assert!(dev.peer_gone());
    dev.backend_gone();
    wait_until("the channel thread to end", || {
        Arc::strong_count(&transport) == 1
    });
}

#[test]
fn without_reply_ack_the_backend_channel_sends_no_ack() {
    let (_backend, _dev, transport, mut theirs) = channel_device("channel-no-ack", false);
    for _ in 0..2 {
        theirs.write_all(&config_change_msg(NEED_REPLY)).unwrap();
        wait_until("the config interrupt", || config_interrupt(&transport));
    }
    // both were handled, so an ack for the first would be there by now
    theirs.set_nonblocking(true).unwrap();
    let mut byte = [0u8];
    let read = theirs.read(&mut byte);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{read:?}"
    );
}
