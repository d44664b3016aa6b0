//! Every seed runs, the seeds reach the code they are named after (used-ring entries, packets
//! at the fake tap, acks), and mutated seeds and random bytes run too.

use std::time::Duration;

use backends::fuzz_harness::test_inputs::{byte_mutations, check_seeds, seed_named, Rng};
use vm_memory::{Bytes, GuestAddress};

use super::queues::{run, run_keeping_memory, Report, CTRL, RX, TX};
use super::seeds::all;
use crate::virtio_net::{CTRL_ERR, CTRL_OK, NET_HDR_LEN, NUM_BUFFERS_OFFSET};

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

#[test]
fn mutated_seeds_and_random_bytes_run() {
    let mut rng = Rng(0x5eed_0ff0_2222);
    for input in byte_mutations(&all(), &mut rng, 15, 300) {
        super::queues(&input);
    }
}
