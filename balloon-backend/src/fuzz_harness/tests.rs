//! Every seed runs, the seeds reach the code they are named after (pages inflated and given
//! back out of the memfd, stats buffers held and returned, ranges reported), mutated seeds
//! and random bytes run too, and the spin the harness steers around is shown.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use backends::fuzz_harness::test_inputs::{byte_mutations, check_seeds, seed_named, Rng};
use vhost_user_backend::VhostUserBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;

use super::driver;
use super::queues::{run, run_keeping_memory, Report};
use super::seed_builder::{INFLATE, REPORTING, STATS};
use super::seeds::all;
use crate::state::BalloonState;
use crate::vhu_balloon::VhostUserBalloon;

fn seed(name: &str) -> Vec<u8> {
    seed_named(all(), name)
}

fn report(name: &str) -> Report {
    run(&seed(name))
}

#[test]
fn every_seed_runs_quickly_under_a_file_name() {
    // the budget is 5 ms in an optimised build; a debug build gets more
    check_seeds(&all(), super::queues, Duration::from_millis(500));
}

#[test]
fn inflated_pages_are_punched_out_of_the_memfd() {
    let (r, driver) = run_keeping_memory(&seed("inflate-run-and-lone-page"));
    assert_eq!((r.inflated_pages, r.released_bytes), (4, 4 * 4096));
    assert_eq!(r.used[INFLATE], 1);
    let mut data = [0xffu8; 10];
    let mem = driver.unwrap().mem;
    mem.read_slice(&mut data, GuestAddress(0x1_0000)).unwrap();
    assert_eq!(
        data, [0; 10],
        "the page went back to the host: it reads as zeroes"
    );

    let r = report("inflate-out-of-range-and-duplicates");
    assert_eq!((r.inflated_pages, r.invalid, r.duplicate), (1, 3, 2));
    let r = report("inflate-the-ring-pages");
    assert_eq!(
        (r.inflated_pages, r.released_bytes),
        (5, 4096),
        "no file to punch"
    );
    let r = report("inflate-then-deflate");
    let counts = (r.inflated_pages, r.deflated_pages, r.invalid, r.duplicate);
    assert_eq!(counts, (8, 2, 1, 2));
    let r = report("inflate-across-adjacent-regions");
    assert_eq!((r.inflated_pages, r.released_bytes), (6, 6 * 4096));
    assert_eq!(
        report("inflate-list-across-adjacent-regions").inflated_pages,
        4
    );
    assert_eq!(report("inflate-unaligned-length").inflated_pages, 2);
    assert_eq!(report("inflate-two-buffers").inflated_pages, 3);
    let r = report("inflate-event-idx-and-deflate-on-oom");
    assert_eq!((r.inflated_pages, r.deflated_pages), (3, 1));
    let r = report("inflate-again-after-a-new-memory-table");
    assert_eq!((r.inflated_pages, r.duplicate), (2, 0));
    assert_eq!(report("ring-size-one").inflated_pages, 2);
    for name in [
        "inflate-more-than-4096-pfns",
        "inflate-writable-buffer",
        "inflate-outside-memory",
    ] {
        let r = report(name);
        assert_eq!(
            (r.malformed, r.inflated_pages, r.used[0]),
            (1, 0, 1),
            "{name}"
        );
    }
}

#[test]
fn stats_buffers_are_held_until_asked_for() {
    let stats = STATS;
    let r = report("stats-buffer-with-tags-given-back");
    assert_eq!((r.stats_given_back, r.used[stats]), (2, 2));
    let r = report("stats-second-buffer-before-the-ask");
    assert_eq!((r.stats_given_back, r.used[stats]), (1, 1));
    assert_eq!(report("stats-ask-without-a-buffer").stats_given_back, 0);
    let r = report("stats-buffer-too-long-and-writable");
    assert_eq!((r.malformed, r.stats_given_back), (2, 1));
}

#[test]
fn reported_ranges_free_whole_pages_inside_ram() {
    let (r, driver) = run_keeping_memory(&seed("reporting-whole-and-partial-pages"));
    assert_eq!(r.reported_bytes, 0x8000 + 0x2000 + 0x1000);
    assert_eq!(r.used[REPORTING], 1);
    let mut data = [0xffu8; 9];
    let mem = driver.unwrap().mem;
    mem.read_slice(&mut data, GuestAddress(0x2_0000)).unwrap();
    assert_eq!(data, [0; 9]);
    let r = report("reporting-out-of-range");
    assert_eq!((r.invalid, r.reported_bytes), (4, 0));
    let r = report("reporting-readable-buffers-counted");
    assert_eq!((r.malformed, r.reported_bytes), (2, 0x1000));
    let r = report("reporting-offered-not-acked");
    assert_eq!((r.used[3], r.reported_bytes), (0, 0));
    assert_eq!(
        report("reporting-acked-without-stats").reported_bytes,
        0x1000
    );
}

#[test]
fn hostile_rings_get_nothing_served() {
    let r = report("ring-avail-idx-far-ahead");
    assert_eq!((r.inflated_pages, r.used), (0, [0; 4]));
    // with EVENT_IDX the device's drain loop gives up on a ring it can pop nothing from
    let r = report("ring-avail-idx-far-ahead-event-idx");
    assert_eq!((r.inflated_pages, r.used), (0, [0; 4]));
    assert_eq!(report("ring-head-past-the-table").inflated_pages, 0);
}

/// A kick with EVENT_IDX and the avail index more than a ring ahead returns (it spun forever
/// in `backends::queue::drain` before the loop stopped on passes that pop nothing). Should it
/// spin again, the test ends the spin itself (the driver puts its index back) after a second,
/// so it fails rather than hangs.
#[test]
fn a_kick_with_the_avail_index_far_ahead_returns() {
    let driver = driver::new(16).unwrap();
    let memory = GuestMemoryAtomic::new(driver.mem.clone());
    let device = VhostUserBalloon::new(Arc::new(BalloonState::default()), false, false);
    device.update_memory(memory.clone()).unwrap();
    device.set_event_idx(true);
    let vrings = driver.vrings(&memory, 3, true).unwrap();
    driver.set_avail_idx(0, 0x8000);
    let (done, returned) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = device.handle_event(0, EventSet::IN, &vrings, 0);
        let _ = done.send(());
    });
    let in_time = returned.recv_timeout(Duration::from_secs(1)).is_ok();
    driver.set_avail_idx(0, 0);
    worker.join().unwrap();
    assert!(in_time, "the kick did not return within a second");
}

#[test]
fn mutated_seeds_and_random_bytes_run() {
    let mut rng = Rng(0xba11_0070_5eed_0001);
    for input in byte_mutations(&all(), &mut rng, 30, 300) {
        super::queues(&input);
    }
}
