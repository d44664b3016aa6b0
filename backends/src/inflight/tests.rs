use std::fs::File;
use std::sync::Arc;

use super::messages::{self, InflightInfo};
use super::region::{queue_area_size, InflightRegion};
use super::*;

const QUEUE: u16 = 8;

/// A fresh region of `queues` queues and the memfd behind it.
fn fresh(queues: u16) -> File {
    InflightRegion::create(queues, QUEUE).expect("region").1
}

/// Queue `q` of the region in `file`, mapped anew as a restarted backend maps it.
fn tracker(file: &File, queues: u16, q: usize) -> Tracker {
    let size = InflightRegion::size_for(queues, QUEUE).expect("size") as u64;
    let region = Arc::new(InflightRegion::map(file, 0, size, queues, QUEUE).expect("map"));
    Tracker::new(region.queue(q).expect("queue"))
}

/// The device side of one ring, for driving a tracker as the blk worker does: pops are
/// counted, publishing moves the used index.
struct Ring {
    used: u16,
}

/// Where a publish is interrupted: after this many of its steps.
#[derive(Debug, Clone, Copy)]
enum Step {
    Nothing,
    LastBatchHead,
    UsedIndex,
    InflightCleared,
    All,
}

impl Ring {
    fn publish(&mut self, t: &Tracker, head: u16, upto: Step) {
        if matches!(upto, Step::Nothing) {
            return;
        }
        t.publishing(head);
        if matches!(upto, Step::LastBatchHead) {
            return;
        }
        // the used element and then the used ring's index (virtio-queue's add_used)
        self.used = self.used.wrapping_add(1);
        if matches!(upto, Step::UsedIndex) {
            return;
        }
        match upto {
            // `published` is two stores: stop between them
            Step::InflightCleared => t.area().set_inflight(head, 0),
            _ => t.published(head, self.used),
        }
    }
}

#[test]
fn a_fresh_region_is_initialized_and_resubmits_nothing() {
    let file = fresh(2);
    let mut t = tracker(&file, 2, 1);
    let r = t.recover(17, QUEUE).expect("fresh");
    assert_eq!(
        r,
        Recovery {
            resubmit: vec![],
            next_avail: 17
        }
    );
    // initialized: a restart now reads version 1 with nothing in flight
    let r = tracker(&file, 2, 1)
        .recover(17, QUEUE)
        .expect("initialized");
    assert_eq!(r.resubmit, Vec::<u16>::new());
}

#[test]
fn a_crash_at_every_point_of_the_publish_order_resubmits_exactly_the_unpublished() {
    for (upto, resubmit, used) in [
        (Step::Nothing, vec![3, 1], 1),
        (Step::LastBatchHead, vec![3, 1], 1),
        (Step::UsedIndex, vec![1], 2),
        (Step::InflightCleared, vec![1], 2),
        (Step::All, vec![1], 2),
    ] {
        let file = fresh(1);
        let mut t = tracker(&file, 1, 0);
        let mut ring = Ring { used: 0 };
        t.recover(ring.used, QUEUE).expect("fresh");
        for head in [3, 5, 1] {
            t.popped(head);
        }
        ring.publish(&t, 5, Step::All);
        ring.publish(&t, 3, upto);
        // a fourth chain was taken from the ring but the process died before marking it
        drop(t);

        let mut next = tracker(&file, 1, 0);
        let r = next.recover(ring.used, QUEUE).expect("recover");
        assert_eq!(ring.used, used, "{upto:?}");
        assert_eq!(r.resubmit, resubmit, "{upto:?}: resubmitted");
        assert_eq!(
            r.next_avail,
            used + resubmit.len() as u16,
            "{upto:?}: the unmarked chain is popped again"
        );
        assert_eq!(
            next.in_flight(),
            resubmit.len(),
            "{upto:?}: region repaired"
        );
    }
}

#[test]
fn resubmission_keeps_the_order_of_submission_across_two_restarts() {
    let file = fresh(1);
    let mut t = tracker(&file, 1, 0);
    let mut ring = Ring { used: 65534 };
    t.recover(ring.used, QUEUE).expect("fresh");
    for head in [6, 2, 4, 0] {
        t.popped(head);
    }
    // completed out of order, as io_uring does
    ring.publish(&t, 4, Step::All);
    ring.publish(&t, 6, Step::All);
    drop(t);
    let mut t = tracker(&file, 1, 0);
    let r = t.recover(ring.used, QUEUE).expect("first restart");
    assert_eq!(r.resubmit, vec![2, 0]);
    assert_eq!(r.next_avail, 2, "the index wraps");
    // the new backend takes one more before it is killed too
    t.popped(7);
    drop(t);
    let r = tracker(&file, 1, 0)
        .recover(ring.used, QUEUE)
        .expect("second restart");
    assert_eq!(r.resubmit, vec![2, 0, 7], "older requests first");
}

#[test]
fn queues_have_their_own_areas() {
    let file = fresh(3);
    let mut a = tracker(&file, 3, 0);
    let mut c = tracker(&file, 3, 2);
    a.recover(0, QUEUE).expect("a");
    c.recover(0, QUEUE).expect("c");
    a.popped(1);
    c.popped(2);
    c.popped(3);
    let r0 = tracker(&file, 3, 0).recover(0, QUEUE).expect("0");
    let r1 = tracker(&file, 3, 1).recover(0, QUEUE).expect("1");
    let r2 = tracker(&file, 3, 2).recover(0, QUEUE).expect("2");
    assert_eq!(
        (r0.resubmit, r1.resubmit, r2.resubmit),
        (vec![1], vec![], vec![2, 3])
    );
}

/// A region written by some other program: each field broken in turn is refused, and the
/// area starts afresh after `reinitialize`.
#[test]
fn a_hostile_region_is_refused() {
    let size = InflightRegion::size_for(1, QUEUE).expect("size");
    // (what, offset, bytes written there, the guest's ring size)
    let cases: [(&str, u64, Vec<u8>, u16); 6] = [
        ("version", 8, 7u16.to_le_bytes().to_vec(), QUEUE),
        ("desc_num", 10, 4u16.to_le_bytes().to_vec(), QUEUE),
        ("features", 0, 1u64.to_le_bytes().to_vec(), QUEUE),
        ("last_batch_head", 12, QUEUE.to_le_bytes().to_vec(), QUEUE),
        ("inflight byte", 16 + 16 * 2, vec![2], QUEUE),
        // descriptor 6 in flight, but the guest's ring has 4 entries
        ("head past the ring", 16 + 16 * 6, vec![1], 4),
    ];
    for (what, at, bytes, ring_size) in cases {
        let file = fresh(1);
        assert_eq!(file.metadata().expect("len").len(), size as u64);
        tracker(&file, 1, 0).recover(0, QUEUE).expect("fresh");
        use std::os::unix::fs::FileExt;
        file.write_all_at(&bytes, at).expect("poke");
        let mut t = tracker(&file, 1, 0);
        let err = t.recover(0, ring_size).expect_err(what);
        assert!(!err.to_string().is_empty());
        t.reinitialize(0);
        let r = t.recover(0, ring_size).expect("after reinitialize");
        assert!(
            r.resubmit.is_empty(),
            "{what}: nothing from a refused region"
        );
    }
}

#[test]
fn a_region_smaller_than_its_queues_is_not_mapped() {
    let file = fresh(1);
    let size = InflightRegion::size_for(2, QUEUE).expect("size") as u64;
    let err = InflightRegion::map(&file, 0, size, 2, QUEUE).expect_err("too small");
    assert!(matches!(err, InflightError::TooSmall { .. }), "{err}");
    let err = InflightRegion::map(&file, u64::MAX - 4, 8, 1, QUEUE).expect_err("offset");
    assert!(matches!(err, InflightError::TooSmall { .. }), "{err}");
    let err = InflightRegion::map(&file, 0, 1 << 20, 1, 100).expect_err("geometry");
    assert!(matches!(err, InflightError::Geometry { .. }), "{err}");
}

#[test]
fn get_then_set_hands_the_device_the_region_the_frontend_keeps() {
    let slot = InflightSlot::new(2);
    assert!(
        slot.newer_than(0).is_none(),
        "nothing before SET_INFLIGHT_FD"
    );
    let asked = InflightInfo {
        num_queues: 2,
        queue_size: QUEUE,
        ..Default::default()
    };
    let reply = messages::get_inflight_fd(&slot, &asked.to_bytes());
    let info = InflightInfo::parse(&reply.body).expect("reply body");
    let file = reply.file.expect("a memfd");
    assert_eq!(info.mmap_size, 2 * queue_area_size(QUEUE) as u64);
    assert_eq!(
        (info.num_queues, info.queue_size, info.mmap_offset),
        (2, QUEUE, 0)
    );
    assert_eq!(file.metadata().expect("len").len(), info.mmap_size);

    messages::set_inflight_fd(&slot, &info.to_bytes(), std::slice::from_ref(&file)).expect("set");
    let (generation, region) = slot.newer_than(0).expect("a new generation");
    assert_eq!(generation, 1);
    let mut t = Tracker::new(region.expect("region").queue(1).expect("queue 1"));
    t.recover(0, QUEUE).expect("fresh");
    t.popped(5);
    // the frontend's copy of the memfd sees it: a restarted backend would
    let r = tracker(&file, 2, 1).recover(0, QUEUE).expect("restart");
    assert_eq!(r.resubmit, vec![5]);
    assert!(slot.newer_than(generation).is_none());
}

#[test]
fn bad_inflight_messages_are_refused() {
    let slot = InflightSlot::new(2);
    let too_many = InflightInfo {
        num_queues: 3,
        queue_size: QUEUE,
        ..Default::default()
    };
    let reply = messages::get_inflight_fd(&slot, &too_many.to_bytes());
    assert!(
        reply.file.is_none(),
        "no region for more queues than the device has"
    );
    assert_eq!(
        InflightInfo::parse(&reply.body),
        Some(InflightInfo::default())
    );
    let odd = InflightInfo {
        num_queues: 1,
        queue_size: 100,
        ..Default::default()
    };
    assert!(messages::get_inflight_fd(&slot, &odd.to_bytes())
        .file
        .is_none());
    assert!(messages::get_inflight_fd(&slot, &[0; 10]).file.is_none());

    let file = fresh(1);
    let info = InflightInfo {
        mmap_size: queue_area_size(QUEUE) as u64,
        mmap_offset: 0,
        num_queues: 1,
        queue_size: QUEUE,
    };
    let no_fd = messages::set_inflight_fd(&slot, &info.to_bytes(), &[]);
    assert!(matches!(no_fd, Err(messages::RequestError::NoFile)));
    let short = messages::set_inflight_fd(&slot, &[1; 19], std::slice::from_ref(&file));
    assert!(matches!(short, Err(messages::RequestError::Body(19))));
    let big = InflightInfo {
        mmap_size: 1 << 30,
        ..info
    };
    let past_end = messages::set_inflight_fd(&slot, &big.to_bytes(), std::slice::from_ref(&file));
    assert!(matches!(past_end, Err(messages::RequestError::Region(_))));
    assert!(slot.newer_than(0).is_none(), "nothing installed");
}
