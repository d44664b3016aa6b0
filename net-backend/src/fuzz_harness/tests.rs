//! Every seed runs, the seeds reach the code they are named after (used-ring entries, packets
//! at the fake tap, acks), and mutated seeds and random bytes run too.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::queues::{run, run_keeping_memory, Report, CTRL, RX, TX};
use super::seeds::all;
use crate::virtio_net::{CTRL_ERR, CTRL_OK, NET_HDR_LEN, NUM_BUFFERS_OFFSET};

fn seed(name: &str) -> Vec<u8> {
    all()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no seed {name}"))
        .1
}

fn report(name: &str) -> Report {
    run(&seed(name))
}

#[test]
fn every_seed_runs_quickly_under_a_file_name() {
    let seeds = all();
    let mut names: Vec<_> = seeds.iter().map(|(n, _)| n.clone()).collect();
    for name in &names {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{name}"
        );
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), seeds.len(), "seed names are unique");
    for (name, input) in &seeds {
        let start = Instant::now();
        super::queues(input);
        // the budget is 5 ms in an optimised build; a debug build gets more
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{name}: {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn transmit_seeds_reach_the_fake_tap() {
    let sent = report("tx-packet-in-two-buffers");
    assert_eq!((sent.tap_packets, sent.used[TX], sent.malformed), (1, 1, 0));
    for name in [
        "tx-device-writable",
        "tx-outside-memory",
        "tx-shorter-than-headers",
        "tx-larger-than-64k",
        "tx-chain-loops-to-itself",
        "tx-next-past-the-table",
    ] {
        let r = report(name);
        assert_eq!(
            (r.tap_packets, r.used[TX], r.malformed),
            (0, 1, 1),
            "{name}"
        );
    }
    assert_eq!(report("tx-across-adjacent-regions").tap_packets, 1);
    assert_eq!(report("tx-indirect-table").tap_packets, 1);
    assert_eq!(report("tx-flows-ipv4-vlan-ipv6").tap_packets, 3);
}

#[test]
fn receive_seeds_fill_the_guests_buffers() {
    let (r, driver) = run_keeping_memory(&seed("rx-merged-across-three-chains"));
    assert_eq!((r.used[RX], r.rx_packets), (3, 1));
    let driver = driver.unwrap();
    let at = GuestAddress(super::driver::DATA + NUM_BUFFERS_OFFSET as u64);
    assert_eq!(driver.mem.read_obj::<u16>(at).unwrap(), 3, "num_buffers");
    assert_eq!(driver.used(RX, 2), (2, (NET_HDR_LEN + 2500 - 2000) as u32));

    let r = report("rx-packet-waits-for-buffers");
    assert_eq!((r.used[RX], r.rx_packets), (2, 2));
    let r = report("rx-too-big-without-merging");
    assert_eq!((r.used[RX], r.rx_packets), (1, 1));
    let r = report("rx-malformed-chains");
    assert_eq!((r.used[RX], r.rx_packets, r.malformed), (3, 1, 2));
    let r = report("rx-event-idx-waits-past-posted");
    assert_eq!((r.used[RX], r.rx_packets), (3, 1));
    let r = report("rx-oversized-and-short-packets");
    assert_eq!(r.rx_packets, 2, "the cut oversized one and the 13-byte one");
}

#[test]
fn control_seeds_get_their_acks() {
    let acks = |name: &str| {
        let r = report(name);
        assert_eq!(r.used[CTRL], 1.max(r.acks[0] + r.acks[1]), "{name}");
        (r.acks, r.pairs_in_use)
    };
    assert_eq!(acks("ctrl-rx-modes"), ([6, 0], 1));
    assert_eq!(acks("ctrl-mac-table-set"), ([1, 0], 1));
    assert_eq!(acks("ctrl-mac-addr-set"), ([1, 0], 2));
    assert_eq!(acks("ctrl-mq-pairs-set"), ([1, 0], 2));
    assert_eq!(acks("ctrl-mq-pairs-set-header-and-data-apart"), ([1, 0], 3));
    for refused in [
        "ctrl-mq-pairs-set-zero",
        "ctrl-mq-pairs-set-too-many",
        "ctrl-mq-pairs-set-cut-short",
        "ctrl-vlan-add-unsupported",
        "ctrl-announce-ack-unsupported",
        "ctrl-header-only-class",
    ] {
        assert_eq!(acks(refused), ([0, 1], 2), "{refused}");
    }
    for malformed in [
        "ctrl-no-ack-byte",
        "ctrl-empty-ack-buffer",
        "ctrl-command-longer-than-4k",
    ] {
        let r = report(malformed);
        assert_eq!(
            (r.acks, r.malformed, r.used[CTRL]),
            ([0, 0], 1, 1),
            "{malformed}"
        );
    }
    assert_eq!(acks("ctrl-junk-after-the-ack"), ([1, 0], 1));
}

#[test]
fn a_driver_running_its_avail_index_ahead_gets_nothing_served() {
    let r = report("ring-avail-idx-far-ahead");
    assert_eq!((r.used, r.tap_packets, r.rx_packets), ([0; 3], 0, 0));
}

#[test]
fn device_mode_seeds_reach_the_device_itself() {
    let r = report("device-tx-packet-in-two-buffers");
    assert_eq!((r.tap_packets, r.used[TX], r.malformed), (1, 1, 0));
    let r = report("device-tx-outside-memory");
    assert_eq!((r.tap_packets, r.used[TX], r.malformed), (0, 1, 1));
    let r = report("device-rx-merged-across-three-chains");
    assert_eq!((r.used[RX], r.rx_packets), (3, 1));
    let r = report("device-rx-packet-waits-for-buffers");
    assert_eq!((r.used[RX], r.rx_packets), (2, 2));
    // the ack byte (buffer 2 of the data area): OK, ERR
    let ack = |name: &str| {
        let (r, driver) = run_keeping_memory(&seed(name));
        assert_eq!(r.used[CTRL], 1, "{name}");
        let at = GuestAddress(super::driver::DATA + 2 * 0x1000);
        driver.unwrap().mem.read_obj::<u8>(at).unwrap()
    };
    assert_eq!(ack("device-ctrl-mac-addr-set"), CTRL_OK);
    assert_eq!(ack("device-ctrl-vlan-add-unsupported"), CTRL_ERR);
    // two pairs: attaching the second tap queue fails on a stand-in tap, and says so
    assert_eq!(ack("device-ctrl-mq-pairs-set"), CTRL_ERR);
    // the device's own drain loop returns from kicks it can take nothing from
    let far_ahead = report("device-ring-avail-idx-far-ahead-event-idx");
    assert_eq!((far_ahead.unsettled, far_ahead.used[TX]), (0, 0));
}

/// xorshift64: the same "random" inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_seeds_and_random_bytes_run() {
    let mut rng = Rng(0x5eed_0ff0_2222);
    let mut inputs = Vec::new();
    for (_, input) in all() {
        for _ in 0..15 {
            let mut m = input.clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(3) {
                    0 if !m.is_empty() => {
                        let i = rng.below(m.len());
                        m[i] ^= 1 << rng.below(8);
                    }
                    1 if !m.is_empty() => {
                        let i = rng.below(m.len());
                        m[i] = rng.next() as u8;
                    }
                    _ => {
                        let i = rng.below(m.len() + 1);
                        m.insert(i, rng.next() as u8);
                    }
                }
            }
            inputs.push(m);
        }
    }
    for _ in 0..300 {
        let len = rng.below(400);
        inputs.push((0..len).map(|_| rng.next() as u8).collect());
    }
    for input in &inputs {
        super::queues(input);
    }
}
