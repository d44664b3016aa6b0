//! The seeds of the queue harness: what `queue_tests.rs` and `ctrl.rs`'s tests exercise, as
//! inputs (a packet sent in two buffers, the hostile transmit chains, merged receive buffers,
//! a packet waiting for buffers, malformed receive chains, each control command valid and
//! not), plus flows, indirect tables, loops and a driver moving its avail index anywhere.

use backends::fuzz_harness::driver_seed::{raw_desc, Desc, Fill};
use backends::fuzz_harness::guest_driver::{INDIRECT, NEXT, WRITE};

use super::driver::{EDGES, RINGS};
use super::queues::{Config, CTRL, DEVICE_MODE, OP_CTRL, OP_RX, OP_TX, OVERSIZED, RX, TX};
use super::seed_builder::{buf, build, config, ipv4_tcp, ipv6_udp, mergeable, packet, NetSeed};
use crate::virtio_net::NET_HDR_LEN;

fn transmit_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let one = |d: Desc| build(config()).chain(TX, &[d]).op(OP_TX).done();
    let mut flows = build(Config {
        taps: 3,
        ..config()
    });
    for (i, frame) in [ipv4_tcp(40000, false), ipv4_tcp(40001, true), ipv6_udp()]
        .iter()
        .enumerate()
    {
        let at = buf(10 + i as u64);
        flows.chain(TX, &[Desc::new(at, 200, 0).fill(Fill::counting(frame))]);
    }
    let mut table = raw_desc(buf(4), 100, 1, 1);
    table.extend(raw_desc(buf(5), 1400, 0, 0));
    vec![
        (
            "tx-packet-in-two-buffers",
            build(config())
                .chain(
                    TX,
                    &[
                        Desc::new(buf(0), 100, 0).fill(packet()),
                        Desc::new(buf(8), 1412, 0).fill(Fill::counting(&[])),
                    ],
                )
                .op(OP_TX)
                .done(),
        ),
        ("tx-device-writable", one(Desc::new(buf(0), 1500, WRITE))),
        ("tx-outside-memory", one(Desc::new(0x4000_0000, 1500, 0))),
        ("tx-shorter-than-headers", one(Desc::new(buf(0), 20, 0))),
        ("tx-larger-than-64k", one(Desc::new(buf(0), 70_000, 0))),
        (
            "tx-across-adjacent-regions",
            one(Desc::new(EDGES[0] - 0x200, 0x400, 0).fill(packet())),
        ),
        ("tx-flows-ipv4-vlan-ipv6", flows.op(OP_TX).done()),
        (
            "tx-indirect-table",
            one(Desc::new(buf(6), 32, INDIRECT).fill(Fill::literal(&table))),
        ),
        (
            "tx-chain-loops-to-itself",
            build(config())
                .raw_chain(
                    TX,
                    &[Desc {
                        next: 255,
                        ..Desc::new(buf(0), 100, NEXT).fill(packet())
                    }],
                )
                .op(OP_TX)
                .done(),
        ),
        (
            "tx-next-past-the-table",
            build(config())
                .raw_chain(
                    TX,
                    &[Desc {
                        next: 100,
                        ..Desc::new(buf(0), 100, NEXT).fill(packet())
                    }],
                )
                .op(OP_TX)
                .done(),
        ),
    ]
}

fn receive_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "rx-merged-across-three-chains",
            build(mergeable())
                .rx_buffers(0, &[1000, 1000, 1000])
                .tap_packet(2500)
                .op(OP_RX)
                .done(),
        ),
        (
            "rx-packet-waits-for-buffers",
            build(mergeable())
                .tap_packet(100)
                .tap_packet(200)
                .op(OP_RX)
                .rx_buffers(0, &[4096])
                .op(OP_RX)
                .rx_buffers(1, &[4096])
                .op(OP_RX)
                .done(),
        ),
        (
            "rx-too-big-without-merging",
            build(config())
                .rx_buffers(0, &[500])
                .tap_packet(1000)
                .tap_packet(300)
                .op(OP_RX)
                .done(),
        ),
        (
            "rx-malformed-chains",
            build(mergeable())
                .chain(RX, &[Desc::new(buf(0), 4096, 0)])
                .chain(RX, &[Desc::new(0x4000_0000, 4096, WRITE)])
                .chain(
                    RX,
                    &[
                        Desc::new(buf(2), 4096, WRITE),
                        Desc::new(buf(3), 4096, WRITE),
                    ],
                )
                .tap_packet(64)
                .op(OP_RX)
                .done(),
        ),
        (
            "rx-event-idx-waits-past-posted",
            build(Config {
                event_idx: true,
                ..mergeable()
            })
            .rx_buffers(0, &[1000])
            .tap_packet(2500)
            .op(OP_RX)
            .rx_buffers(1, &[1000, 1000])
            .op(OP_RX)
            .done(),
        ),
        (
            "rx-oversized-and-short-packets",
            build(mergeable())
                .chain(RX, &[Desc::new(EDGES[0] - 0x800, 0x1000, WRITE)])
                .rx_buffers(0, &[0xf000, 0xf000, 0xf000, 0xf000, 0xf000])
                .op_packet(OVERSIZED)
                .op_packet(NET_HDR_LEN as u16)
                .tap_packet(1)
                .op(OP_RX)
                .done(),
        ),
    ]
}

fn control_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let pairs = |n: usize| Config {
        pairs: n,
        ..config()
    };
    let cmd = |bytes: &[u8]| build(pairs(2)).command(bytes).op(OP_CTRL).done();
    let mut rx_modes = build(config());
    for mode in 0..6 {
        rx_modes.command(&[0, mode, 1]);
    }
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let mut unicast = 1u32.to_le_bytes().to_vec();
    unicast.extend_from_slice(&mac);
    let mut multicast = 2u32.to_le_bytes().to_vec();
    multicast.extend_from_slice(&[1, 0, 0x5e, 0, 0, 1, 0x33, 0x33, 0, 0, 0, 1]);
    let ack = Desc::new(buf(2), 1, WRITE);
    let mut mac_addr = vec![1, 1];
    mac_addr.extend_from_slice(&mac);
    vec![
        ("ctrl-rx-modes", rx_modes.op(OP_CTRL).done()),
        (
            "ctrl-mac-table-set",
            build(config())
                .chain(
                    CTRL,
                    &[
                        Desc::new(buf(1), 2, 0).fill(Fill::literal(&[1, 0])),
                        Desc::new(buf(3), 10, 0).fill(Fill::literal(&unicast)),
                        Desc::new(buf(4), 16, 0).fill(Fill::literal(&multicast)),
                        ack.clone(),
                    ],
                )
                .op(OP_CTRL)
                .done(),
        ),
        ("ctrl-mac-addr-set", cmd(&mac_addr)),
        ("ctrl-mq-pairs-set", cmd(&[4, 0, 2, 0])),
        ("ctrl-mq-pairs-set-zero", cmd(&[4, 0, 0, 0])),
        ("ctrl-mq-pairs-set-too-many", cmd(&[4, 0, 3, 0])),
        ("ctrl-mq-pairs-set-cut-short", cmd(&[4, 0, 2])),
        (
            "ctrl-mq-pairs-set-header-and-data-apart",
            build(pairs(4))
                .chain(
                    CTRL,
                    &[
                        Desc::new(buf(1), 2, 0).fill(Fill::literal(&[4, 0])),
                        Desc::new(buf(3), 2, 0).fill(Fill::literal(&[3, 0])),
                        ack.clone(),
                    ],
                )
                .op(OP_CTRL)
                .done(),
        ),
        ("ctrl-vlan-add-unsupported", cmd(&[2, 0, 5, 0])),
        ("ctrl-announce-ack-unsupported", cmd(&[3, 0])),
        ("ctrl-header-only-class", cmd(&[4])),
        (
            "ctrl-no-ack-byte",
            build(config())
                .chain(
                    CTRL,
                    &[Desc::new(buf(1), 3, 0).fill(Fill::literal(&[0, 0, 1]))],
                )
                .op(OP_CTRL)
                .done(),
        ),
        (
            "ctrl-empty-ack-buffer",
            build(config())
                .chain(
                    CTRL,
                    &[
                        Desc::new(buf(1), 3, 0).fill(Fill::literal(&[0, 0, 1])),
                        Desc::new(buf(2), 0, WRITE),
                    ],
                )
                .op(OP_CTRL)
                .done(),
        ),
        (
            "ctrl-command-longer-than-4k",
            build(config())
                .chain(
                    CTRL,
                    &[
                        Desc::new(buf(1), 4097, 0).fill(Fill::counting(&[1, 0])),
                        ack.clone(),
                    ],
                )
                .op(OP_CTRL)
                .done(),
        ),
        (
            "ctrl-junk-after-the-ack",
            build(config())
                .chain(
                    CTRL,
                    &[
                        Desc::new(buf(1), 3, 0).fill(Fill::literal(&[0, 0, 1])),
                        ack,
                        Desc::new(1 << 40, 8, 0),
                    ],
                )
                .op(OP_CTRL)
                .done(),
        ),
    ]
}

/// A driver breaking the ring rules rather than the chain rules.
fn hostile_ring_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ahead = |event_idx: bool| {
        let mut b = build(Config {
            event_idx,
            ..mergeable()
        });
        b.rx_buffers(0, &[4096]).tap_packet(100);
        for q in [RX, TX, CTRL] {
            b.avail_idx(q, 0x8000);
        }
        b.op(OP_RX).op(OP_TX).op(OP_CTRL).done()
    };
    // the transmit ring's avail slot 0 names descriptor 200, past the 16-entry table
    let avail_tx = RINGS[TX] + 16 * 16 + 4;
    vec![
        ("ring-avail-idx-far-ahead", ahead(false)),
        ("ring-avail-idx-far-ahead-event-idx", ahead(true)),
        (
            "ring-head-past-the-table",
            build(config())
                .chain(TX, &[Desc::new(buf(0), 100, 0).fill(packet())])
                .poke(avail_tx, &200u16.to_le_bytes())
                .op(OP_TX)
                .done(),
        ),
        (
            "ring-size-one-every-queue",
            build(Config {
                size_log2: 0,
                ..mergeable()
            })
            .rx_buffers(0, &[100])
            .tap_packet(300)
            .op(OP_RX)
            .chain(TX, &[Desc::new(buf(2), 100, 0).fill(packet())])
            .op(OP_TX)
            .command(&[0, 0, 1])
            .op(OP_CTRL)
            .done(),
        ),
    ]
}

/// Every seed, and each again in device mode (named `device-…`).
pub(super) fn all() -> Vec<(String, Vec<u8>)> {
    let direct: Vec<_> = [
        transmit_seeds(),
        receive_seeds(),
        control_seeds(),
        hostile_ring_seeds(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let device = direct.iter().map(|(name, input)| {
        let mut input = input.clone();
        input[1] |= DEVICE_MODE;
        (format!("device-{name}"), input)
    });
    direct
        .iter()
        .map(|(name, input)| (name.to_string(), input.clone()))
        .chain(device)
        .collect()
}
