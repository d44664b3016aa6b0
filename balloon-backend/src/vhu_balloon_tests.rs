//! The device against a split ring written by hand in anonymous guest memory: the stats queue
//! and a `stats` request racing each other (the lock order of `vhu_balloon.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use backends::guest_memory::GuestMemoryMmap;
use backends::guest_memory::Vring;
use vhost_user_backend::{VhostUserBackend, VringT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;

use crate::state::BalloonState;
use crate::vhu_balloon::VhostUserBalloon;

const QUEUE_SIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// The stats buffer: one 10-byte entry (tag 0 = swap_in, value 7).
const STATS: u64 = 0x4000;
/// Queue 2 is the stats queue (inflate, deflate, stats).
const STATS_QUEUE: u16 = 2;

fn memory() -> GuestMemoryAtomic<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    GuestMemoryAtomic::new(mem)
}

/// Three ready vrings; only the stats queue's has rings.
fn vrings(mem: &GuestMemoryAtomic<GuestMemoryMmap>) -> Vec<Vring> {
    (0..3)
        .map(|_| {
            let v = Vring::new(mem.clone(), QUEUE_SIZE).unwrap();
            v.set_queue_size(QUEUE_SIZE);
            v.set_queue_info(DESC, AVAIL, USED).unwrap();
            v.set_queue_ready(true);
            v.set_enabled(true);
            v
        })
        .collect()
}

/// What the driver does: descriptor 0 is the stats buffer, made available once more.
fn post_stats_buffer(mem: &GuestMemoryMmap) {
    let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
    let slot = AVAIL + 4 + 2 * u64::from(idx % QUEUE_SIZE);
    mem.write_obj(0u16, GuestAddress(slot)).unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
        .unwrap();
}

#[test]
fn the_stats_queue_and_a_stats_request_racing_do_not_deadlock() {
    let mem = memory();
    let m = mem.memory();
    // descriptor 0: addr, len, flags (device-readable), next
    m.write_obj(STATS, GuestAddress(DESC)).unwrap();
    m.write_obj(10u32, GuestAddress(DESC + 8)).unwrap();
    m.write_obj(0u32, GuestAddress(DESC + 12)).unwrap();
    m.write_obj(0u16, GuestAddress(STATS)).unwrap();
    m.write_obj(7u64, GuestAddress(STATS + 2)).unwrap();
    drop(m);
    let state = Arc::new(BalloonState::default());
    let dev = Arc::new(VhostUserBalloon::new(state.clone(), false, false));
    dev.update_memory(mem.clone()).unwrap();
    let vrings = vrings(&mem);

    // the guest posts its stats buffer and kicks, over and over (one worker thread, as the
    // device's), while the control socket asks for fresh numbers, over and over
    let run_for = Duration::from_secs(2);
    let stop = Arc::new(AtomicBool::new(false));
    let (done, finished) = mpsc::channel();
    let worker = {
        let (dev, mem, stop, done) = (dev.clone(), mem.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut kicks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                post_stats_buffer(&mem.memory());
                dev.handle_event(STATS_QUEUE, EventSet::IN, &vrings, 0)
                    .unwrap();
                kicks += 1;
            }
            done.send(("kicks", kicks)).unwrap();
        })
    };
    let asker = {
        let (dev, stop) = (dev.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut given_back = 0u64;
            while !stop.load(Ordering::Relaxed) {
                given_back += u64::from(dev.ask_for_stats());
            }
            done.send(("given back", given_back)).unwrap();
        })
    };
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    // a deadlocked pair never reports: fail after a bound instead of hanging the test run
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut counts = Vec::new();
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match finished.recv_timeout(left) {
            Ok(c) => counts.push(c),
            Err(_) => panic!(
                "deadlock: the stats queue and ask_for_stats did not finish within 10 s \
                 of being told to stop (finished: {counts:?})"
            ),
        }
    }
    worker.join().unwrap();
    asker.join().unwrap();
    eprintln!("{counts:?}");
    assert!(counts.iter().all(|&(_, n)| n > 0), "{counts:?}");
    assert_eq!(state.counters.malformed_chains.load(Ordering::Relaxed), 0);
}

/// A memory table whose one region sits at the top of the guest address space: the page
/// bookkeeping is sized by the RAM present (1 MiB here), not by the highest address (which
/// once asked for a 2^48-byte bitmap and aborted the process). The region is served: its RAM
/// is counted, and inflating a page below it is refused as outside guest RAM (a page frame
/// number is 32 bits, so no page of this region can be named).
#[test]
fn a_memory_table_at_the_top_of_the_address_space_is_served_without_an_abort() {
    let top = GuestAddress(1 << 63);
    let mem = GuestMemoryMmap::from_ranges(&[(top, 1 << 20)]).unwrap();
    let state = Arc::new(BalloonState::default());
    let dev = VhostUserBalloon::new(state.clone(), false, false);
    dev.update_memory(GuestMemoryAtomic::new(mem)).unwrap();
    assert_eq!(state.ram.load(Ordering::Relaxed), 1 << 20);
}

/// GET_CONFIG answers any window of the spec's `struct virtio_balloon_config` (num_pages,
/// actual, free_page_hint_cmd_id, poison_val: 16 bytes), zeros for the fields we do not offer.
#[test]
fn get_config_answers_every_window_of_the_spec_config_space() {
    const SPEC_CONFIG_LEN: usize = 16;
    let state = Arc::new(BalloonState::default());
    state.num_pages.store(0x1234, Ordering::Relaxed);
    state.driver_wrote_actual(0x10);
    let dev = VhostUserBalloon::new(state, false, false);
    let mut spec = [0u8; SPEC_CONFIG_LEN];
    spec[..4].copy_from_slice(&0x1234u32.to_le_bytes());
    spec[4..8].copy_from_slice(&0x10u32.to_le_bytes());
    let wrong = backends::config_space::first_wrong_window(&spec, |o, s| dev.get_config(o, s));
    assert_eq!(wrong, None);
}
