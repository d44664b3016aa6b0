//! A balloon process that replaces a killed one: the vmm's restore of the config space it last
//! saw (SET_CONFIG flagged LIVE_MIGRATION) goes through the serve loop's stack — the relay,
//! the factory's hook — and becomes the target and `actual` the new process serves, reads
//! through GET_CONFIG and reports on the control socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use backends::fuzz_harness::backend_checks::serial;
use backends::fuzz_harness::{self as harness, Device, Message, Outcome};
use backends::serve::{BackendFactory, DaemonConfig};
use vhost::vhost_user::message::{FrontendReq, VhostUserConfig, VhostUserConfigFlags};

use crate::state::BalloonState;
use crate::virtio_balloon::{config_bytes, ACTUAL_OFFSET, CONFIG_LEN};
use crate::{control, BalloonFactory, Config};

/// 512 KiB asked back of the harness's 1 MiB guest; 100 pages of it given.
const NUM_PAGES: u32 = 128;
const ACTUAL: u32 = 100;

fn fresh_factory() -> BalloonFactory {
    BalloonFactory {
        state: Arc::new(BalloonState::default()),
        config: Config {
            control: None,
            deflate_on_oom: false,
            free_page_reporting: false,
            stats_interval: 0,
            daemon: DaemonConfig::default(),
        },
        control: None,
    }
}

/// SET_CONFIG's body with `flags`.
fn set_config(offset: u32, flags: VhostUserConfigFlags, payload: &[u8]) -> Vec<u8> {
    let mut b = harness::body(&VhostUserConfig::new(offset, payload.len() as u32, flags));
    b.extend_from_slice(payload);
    b
}

/// The vmm's take-over of a new process: its handshake and rings, the restore (asking for an
/// ack), a fresh GET_CONFIG; then the messages of `after`. Through the relay when `relay`.
fn take_over(
    factory: BalloonFactory,
    relay: bool,
    after: &[Message],
) -> (Outcome, Arc<BalloonState>) {
    let _serial = serial();
    let state = factory.state.clone();
    let d = Device::of(&fresh_factory().create().unwrap(), 0, CONFIG_LEN);
    let restore = set_config(
        0,
        VhostUserConfigFlags::LIVE_MIGRATION,
        &config_bytes(NUM_PAGES, ACTUAL),
    );
    let read = harness::config(0, CONFIG_LEN as u32, &[]);
    let messages = [
        d.start(false),
        vec![
            Message::new(FrontendReq::SET_CONFIG, restore).need_reply(),
            Message::new(FrontendReq::GET_CONFIG, read),
        ],
        after.to_vec(),
    ]
    .concat();
    let data = harness::encode(u8::from(relay), &messages);
    let out = harness::drive("splitvisor-balloon", factory, &data).unwrap();
    assert!(out.completed && out.ended.is_none(), "{out:?}");
    (out, state)
}

/// The config space the first GET_CONFIG after the restore answered.
fn config_after_restore(out: &Outcome) -> Vec<u8> {
    let reads = out.replies_to(FrontendReq::GET_CONFIG);
    // the handshake's read, then the one after the restore
    assert_eq!(reads.len(), 2, "{out:?}");
    reads[1].body[12..].to_vec()
}

#[test]
fn a_new_process_serves_the_restored_target_and_actual() {
    let (out, state) = take_over(fresh_factory(), true, &[]);
    let acks = out.replies_to(FrontendReq::SET_CONFIG);
    assert_eq!(acks.len(), 1, "{out:?}");
    assert_eq!(acks[0].u64(), Some(0), "taken");
    assert_eq!(config_after_restore(&out), config_bytes(NUM_PAGES, ACTUAL));
    // what svctl setmem / dommemstat read on the control socket
    let info = control::handle(&serde_json::json!({"op": "info"}), &state);
    let ram = harness::GUEST_RAM;
    assert_eq!(info["ram_bytes"], ram);
    assert_eq!(info["target_bytes"], ram - u64::from(NUM_PAGES) * 4096);
    assert_eq!(info["balloon_bytes"], u64::from(ACTUAL) * 4096);
}

#[test]
fn without_the_relay_the_handler_drops_the_flag_and_the_restore_is_lost() {
    // why the relay takes it: vhost-user-backend hands SET_CONFIG to the device without its
    // flags, and a driver writes only `actual`
    let (out, state) = take_over(fresh_factory(), false, &[]);
    assert_eq!(config_after_restore(&out), config_bytes(0, 0));
    assert_eq!(state.num_pages.load(Ordering::Relaxed), 0);
}

#[test]
fn a_restore_then_the_drivers_own_writes() {
    // the driver goes on writing `actual` after the restore; a later restore (another
    // reconnect to this same process) no longer changes anything
    let actual = 120u32.to_le_bytes();
    let again = set_config(0, VhostUserConfigFlags::LIVE_MIGRATION, &config_bytes(1, 1));
    let after = [
        Message::new(
            FrontendReq::SET_CONFIG,
            harness::config(ACTUAL_OFFSET, 4, &actual),
        ),
        Message::new(FrontendReq::SET_CONFIG, again).need_reply(),
        Message::new(
            FrontendReq::GET_CONFIG,
            harness::config(0, CONFIG_LEN as u32, &[]),
        ),
    ];
    let (out, state) = take_over(fresh_factory(), true, &after);
    let reads = out.replies_to(FrontendReq::GET_CONFIG);
    let last = &reads.last().unwrap().body[12..];
    assert_eq!(last, config_bytes(NUM_PAGES, 120));
    assert_eq!(state.actual.load(Ordering::Relaxed), 120);
    let acks = out.replies_to(FrontendReq::SET_CONFIG);
    assert_eq!(acks.len(), 2, "{out:?}");
    assert_eq!(acks[1].u64(), Some(0), "ignored, not refused");
}

#[test]
fn a_restore_outside_the_space_is_refused_in_the_ack() {
    let bad = set_config(4, VhostUserConfigFlags::LIVE_MIGRATION, &[0xff; 8]);
    let after = [Message::new(FrontendReq::SET_CONFIG, bad).need_reply()];
    let (out, state) = take_over(fresh_factory(), true, &after);
    let acks = out.replies_to(FrontendReq::SET_CONFIG);
    assert_eq!(acks.len(), 2, "{out:?}");
    assert_eq!(acks[1].u64(), Some(1), "refused");
    assert_eq!(state.num_pages.load(Ordering::Relaxed), NUM_PAGES);
    assert_eq!(state.actual.load(Ordering::Relaxed), ACTUAL);
}
