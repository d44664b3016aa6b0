//! The seeds of the queue harness: what `pages_tests.rs` and `vhu_balloon_tests.rs` exercise,
//! as inputs (page frame numbers in runs, out of range, duplicated; a stats buffer with tags;
//! reported ranges, whole and not), plus the malformed chains and hostile rings a driver can
//! post, and `pages.rs` with huge pages on its own.

use backends::fuzz_harness::driver_seed::{Desc, DriverSeed, Fill};
use backends::fuzz_harness::guest_driver::WRITE;

use super::driver::{EDGES, RINGS};
use super::huge_pages::{write_pfns, AT_TOP, OP_DEFLATE, OP_INFLATE, OP_REPORT};
use super::input::Seed;
use super::queues::{Config, OP_ASK_STATS, OP_MEM_TABLE, PAGES_MODE};
use super::seed_builder::{
    build, config, list, pfn_bytes, reporting, stat_bytes, BalloonSeed, DEFLATE, INFLATE,
    REPORTING, STATS,
};

fn inflate_deflate_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let one = |desc: Desc| build(config()).chain(INFLATE, &[desc]).kick(INFLATE).done();
    vec![
        (
            "inflate-run-and-lone-page",
            build(config())
                .poke(0x1_0000, b"guest data")
                .pfns(INFLATE, 0, &[0x10, 0x11, 0x12, 0x40])
                .done(),
        ),
        (
            "inflate-out-of-range-and-duplicates",
            build(config())
                .pfns(INFLATE, 0, &[0x90, 0x140, u32::MAX, 0x20, 0x20])
                .pfns(INFLATE, 1, &[0x20])
                .done(),
        ),
        (
            "inflate-the-ring-pages",
            build(config())
                .pfns(INFLATE, 0, &[0, 1, 2, 3])
                .pfns(INFLATE, 1, &[0x30])
                .done(),
        ),
        (
            "inflate-then-deflate",
            build(config())
                .chain(
                    INFLATE,
                    &[Desc::new(list(0), 32, 0).fill(Fill::u32s_from(0x30))],
                )
                .kick(INFLATE)
                .pfns(DEFLATE, 1, &[0x30, 0x31, 0x90, 0x50, 0x31])
                .done(),
        ),
        (
            "inflate-across-adjacent-regions",
            build(config())
                .pfns(INFLATE, 0, &[0x3e, 0x3f, 0x40, 0x41, 0x100, 0x13f])
                .done(),
        ),
        (
            "inflate-list-across-adjacent-regions",
            one(Desc::new(EDGES[0] - 8, 16, 0)
                .fill(Fill::literal(&pfn_bytes(&[0x50, 0x51, 0x52, 0x53])))),
        ),
        (
            "inflate-unaligned-length",
            one(Desc::new(list(0), 10, 0).fill(Fill::literal(&pfn_bytes(&[0x20, 0x21, 0x22])))),
        ),
        (
            "inflate-more-than-4096-pfns",
            one(Desc::new(list(0), 4 * 4096 + 4, 0).fill(Fill::u32s_from(0x10))),
        ),
        ("inflate-writable-buffer", one(Desc::new(list(0), 8, WRITE))),
        ("inflate-outside-memory", one(Desc::new(1 << 40, 8, 0))),
        (
            "inflate-two-buffers",
            build(config())
                .chain(
                    INFLATE,
                    &[
                        Desc::new(list(0), 8, 0).fill(Fill::literal(&pfn_bytes(&[0x20, 0x21]))),
                        Desc::new(list(1), 6, 0).fill(Fill::literal(&pfn_bytes(&[0x22, 0x23]))),
                    ],
                )
                .kick(INFLATE)
                .done(),
        ),
        (
            "inflate-event-idx-and-deflate-on-oom",
            build(Config {
                event_idx: true,
                deflate_on_oom: true,
                ..config()
            })
            .pfns(INFLATE, 0, &[0x20, 0x21])
            .pfns(INFLATE, 1, &[0x22])
            .pfns(DEFLATE, 2, &[0x21])
            .done(),
        ),
        (
            "inflate-again-after-a-new-memory-table",
            build(config())
                .pfns(INFLATE, 0, &[0x20])
                .op(OP_MEM_TABLE)
                .pfns(INFLATE, 1, &[0x20])
                .done(),
        ),
    ]
}

fn stats_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let stats: Vec<(u16, u64)> = (0..10).map(|t| (t, 1000 + u64::from(t))).collect();
    let mut buffer = stat_bytes(&stats);
    buffer.extend(stat_bytes(&[(99, 1)]));
    buffer.push(7); // a partial entry
    let stats_chain = |b: &mut DriverSeed| {
        b.chain(
            STATS,
            &[Desc::new(list(4), buffer.len() as u32, 0).fill(Fill::literal(&buffer))],
        )
        .kick(STATS);
    };
    let mut given_back = build(config());
    stats_chain(&mut given_back);
    given_back.op(OP_ASK_STATS);
    stats_chain(&mut given_back);
    given_back.op(OP_ASK_STATS).op(OP_ASK_STATS);
    let mut two = build(config());
    stats_chain(&mut two);
    stats_chain(&mut two);
    two.op(OP_ASK_STATS);
    vec![
        ("stats-buffer-with-tags-given-back", given_back.done()),
        ("stats-second-buffer-before-the-ask", two.done()),
        (
            "stats-ask-without-a-buffer",
            build(config()).op(OP_ASK_STATS).done(),
        ),
        (
            "stats-buffer-too-long-and-writable",
            build(config())
                .chain(STATS, &[Desc::new(list(4), 641, 0)])
                .kick(STATS)
                .chain(STATS, &[Desc::new(list(4), 10, WRITE)])
                .kick(STATS)
                .op(OP_ASK_STATS)
                .done(),
        ),
    ]
}

fn reporting_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "reporting-whole-and-partial-pages",
            build(reporting())
                .poke(0x2_0000, b"free page")
                .chain(
                    REPORTING,
                    &[
                        Desc::new(0x2_0000, 0x8000, WRITE),
                        Desc::new(0x3_0100, 0x3000, WRITE),
                        Desc::new(0x10_0000, 0x1000, WRITE),
                    ],
                )
                .kick(REPORTING)
                .done(),
        ),
        (
            "reporting-out-of-range",
            build(reporting())
                .chain(
                    REPORTING,
                    &[
                        Desc::new(EDGES[0] - 0x1000, 0x2000, WRITE),
                        Desc::new(0x8_0000, 0x1000, WRITE),
                        Desc::new(u64::MAX - 10, 0x1000, WRITE),
                        Desc::new(0x3_f000, 0x1_0000, WRITE),
                    ],
                )
                .kick(REPORTING)
                .done(),
        ),
        (
            "reporting-readable-buffers-counted",
            build(reporting())
                .chain(
                    REPORTING,
                    &[
                        Desc::new(0x2_0000, 0x1000, 0),
                        Desc::new(0x2_1000, 0x1000, WRITE),
                        Desc::new(0x2_2000, 0x1000, 0),
                    ],
                )
                .kick(REPORTING)
                .done(),
        ),
        (
            "reporting-offered-not-acked",
            build(reporting())
                .ack(1)
                .chain(REPORTING, &[Desc::new(0x2_0000, 0x1000, WRITE)])
                .kick(REPORTING)
                .done(),
        ),
        (
            "reporting-acked-without-stats",
            build(reporting())
                .ack(4)
                .chain(STATS, &[Desc::new(0x2_0000, 0x1000, WRITE)])
                .kick(STATS)
                .done(),
        ),
    ]
}

fn hostile_ring_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ahead = |event_idx: bool| {
        build(Config {
            event_idx,
            ..config()
        })
        .chain(
            INFLATE,
            &[Desc::new(list(0), 4, 0).fill(Fill::literal(&[0x20, 0, 0, 0]))],
        )
        .avail_idx(INFLATE, 0x8000)
        .kick(INFLATE)
        .done()
    };
    // the inflate ring's avail slot 0 names descriptor 200, past the 16-entry table
    let avail_inflate = RINGS[0] + 16 * 16 + 4;
    vec![
        ("ring-avail-idx-far-ahead", ahead(false)),
        ("ring-avail-idx-far-ahead-event-idx", ahead(true)),
        (
            "ring-head-past-the-table",
            build(config())
                .chain(INFLATE, &[Desc::new(list(0), 4, 0)])
                .poke(avail_inflate, &200u16.to_le_bytes())
                .kick(INFLATE)
                .done(),
        ),
        (
            "ring-kick-for-unknown-queues",
            build(config()).kick(3).kick(4).kick(5).done(),
        ),
        (
            "ring-size-one",
            build(Config {
                size_log2: 0,
                ..config()
            })
            .pfns(INFLATE, 0, &[0x20])
            .pfns(INFLATE, 1, &[0x21])
            .done(),
        ),
    ]
}

/// `huge_pages.rs` inputs: 2 MiB backing pages unless `small`.
fn pages(small: bool, build: impl FnOnce(&mut Seed)) -> Vec<u8> {
    let mut seed = Seed::default();
    seed.u8(PAGES_MODE).u8(u8::from(!small));
    build(&mut seed);
    seed.0
}

fn huge_page_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let half = |from: u32| (from..from + 256).collect::<Vec<u32>>();
    vec![
        (
            "pages-huge-page-given-back-when-whole",
            pages(false, |s| {
                write_pfns(s, OP_INFLATE, &half(512)[..128]);
                write_pfns(s, OP_INFLATE, &half(512)[128..]);
                write_pfns(s, OP_INFLATE, &half(768)[..128]);
                write_pfns(s, OP_INFLATE, &half(768)[128..]);
                write_pfns(s, OP_DEFLATE, &[600, 601, 5000]);
            }),
        ),
        (
            "pages-huge-page-completed-by-two-runs",
            pages(false, |s| {
                let most: Vec<u32> = (512..1024).filter(|p| *p != 600 && *p != 700).collect();
                for part in most.chunks(200) {
                    write_pfns(s, OP_INFLATE, part);
                }
                write_pfns(s, OP_INFLATE, &[600, 700]);
            }),
        ),
        (
            "pages-small-hostile-numbers",
            pages(true, |s| {
                write_pfns(s, OP_INFLATE, &[10, 11, 12, 100, 0x0a_0000, u32::MAX, 11]);
                write_pfns(s, OP_INFLATE, &[10, 12]);
                write_pfns(s, OP_DEFLATE, &[10, 13, 0x0a_0000]);
            }),
        ),
        (
            "pages-reported-ranges",
            pages(false, |s| {
                for (at, len) in [(3u16 << 11, 4u32 << 20), (8 << 11, 2 << 20), (AT_TOP, 4096)] {
                    s.u8(OP_REPORT).u16(at).u32(len);
                }
            }),
        ),
    ]
}

pub(super) fn all() -> Vec<(String, Vec<u8>)> {
    [
        inflate_deflate_seeds(),
        stats_seeds(),
        reporting_seeds(),
        hostile_ring_seeds(),
        huge_page_seeds(),
    ]
    .into_iter()
    .flatten()
    .map(|(name, input)| (name.to_string(), input))
    .collect()
}
