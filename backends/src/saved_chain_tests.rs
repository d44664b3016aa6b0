//! A saved chain against virtio-queue's own walk of the same head, on random descriptor tables
//! (loops, bad next indexes, indirect tables good, bad and nested, lengths past 4 GiB) and on a
//! few chains written out by hand.

use super::*;
use crate::descriptor_chain::{ChainBuffers, ChainError, OutOfOrder};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};

const NEXT: u16 = 1; // VRING_DESC_F_NEXT
const WRITE: u16 = 2; // VRING_DESC_F_WRITE
const INDIRECT: u16 = 4; // VRING_DESC_F_INDIRECT

/// Where the random indirect tables go, each with room for `TABLE_MAX` descriptors.
const TABLES_AT: u64 = 0x8000;
const TABLES: u64 = 8;
const TABLE_MAX: u64 = 128;
/// The second memory region, after a hole; filled with random bytes.
const HIGH_AT: u64 = 0x2_0000;
const REGION: usize = 0x1_0000;
/// More descriptors than any walk can yield (a queue size plus `u16::MAX`): a walk that does
/// not stop is cut here, and then differs.
const LIMIT: usize = 1 << 17;

/// 64 KiB at 0 (the queue, at 0, then the indirect tables) and 64 KiB at `HIGH_AT`, after a
/// hole.
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), REGION), (GuestAddress(HIGH_AT), REGION)])
        .unwrap()
}

/// A descriptor as the comparison sees it: addr, len, flags, next.
type Fields = (u64, u32, u16, u16);

fn fields(chain: impl Iterator<Item = Descriptor>) -> Vec<Fields> {
    chain
        .take(LIMIT)
        .map(|d| (d.addr().raw_value(), d.len(), d.flags(), d.next()))
        .collect()
}

fn write_table(mem: &GuestMemoryMmap, at: u64, descs: &[Descriptor]) {
    for (i, desc) in descs.iter().enumerate() {
        mem.write_obj(*desc, GuestAddress(at + 16 * i as u64))
            .unwrap();
    }
}

/// What virtio-queue yields for `head`, published as the only entry of the available ring of
/// a fresh queue on `mq`.
fn popped(mem: &GuestMemoryMmap, mq: &MockSplitQueue<GuestMemoryMmap>, head: u16) -> Vec<Fields> {
    mq.avail().ring().ref_at(0).unwrap().store(head);
    mq.avail().idx().store(1);
    let mut queue: Queue = mq.create_queue().unwrap();
    let chain = queue.iter(mem).unwrap().next().unwrap();
    assert_eq!(chain.head_index(), head);
    fields(chain)
}

/// What a saved chain yields for `head` in the queue at 0 of `size`.
fn saved(mem: &GuestMemoryMmap, size: u16, head: u16) -> Vec<Fields> {
    let chain = SavedChain::new(mem, GuestAddress(0), size, head);
    assert_eq!(chain.head(), head);
    fields(chain)
}

/// xorshift64: deterministic, no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `num / den`.
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// A random descriptor in a table of `table_len`: NEXT more often than not, next indexes in
/// and past the table, indirect descriptors (`indirect_odds` in 16) naming one of the random
/// tables or somewhere worse, and lengths up to `u32::MAX`.
fn random_desc(rng: &mut Rng, table_len: u64, indirect_odds: u64) -> Descriptor {
    let mut flags = 0;
    if rng.chance(3, 4) {
        flags |= NEXT;
    }
    if rng.chance(1, 2) {
        flags |= WRITE;
    }
    if rng.chance(indirect_odds, 16) {
        flags |= INDIRECT;
    }
    if rng.chance(1, 8) {
        flags |= rng.next() as u16 & !(NEXT | WRITE | INDIRECT);
    }
    let next = if rng.chance(7, 8) {
        rng.below(table_len + 2) as u16
    } else {
        rng.next() as u16
    };
    let (addr, len) = if flags & INDIRECT != 0 {
        random_table(rng)
    } else {
        let addr = if rng.chance(1, 2) {
            rng.below(0x4_0000)
        } else {
            rng.next()
        };
        let len = match rng.below(8) {
            0 => u32::MAX,
            1 => (1 << 31) + rng.below(1 << 31) as u32,
            2 => rng.next() as u32,
            _ => rng.below(0x1000) as u32,
        };
        (addr, len)
    };
    Descriptor::new(addr, len, flags, next)
}

/// Where an indirect descriptor points, and its length: mostly one of the random tables,
/// else the queue's own table, memory's edges, the hole, the random bytes, the top of the
/// address space; lengths whole and not, up to more than `u16::MAX` entries.
fn random_table(rng: &mut Rng) -> (u64, u32) {
    let addr = match rng.below(10) {
        0 => 0,
        1 => REGION as u64 - 16 * rng.below(4),
        2 => 0x1_8000,
        3 => HIGH_AT + 16 * rng.below(0x1000),
        4 => u64::MAX - 15,
        5 => u64::MAX - 16 * rng.below(4) - 7,
        _ => TABLES_AT + 16 * TABLE_MAX * rng.below(TABLES),
    };
    let len = match rng.below(10) {
        0 => rng.next() as u32,
        1 => 16 * rng.below(TABLE_MAX) as u32 + 1 + rng.below(15) as u32,
        2 => 16 * u32::from(u16::MAX),
        3 => 16 * (u32::from(u16::MAX) + 1),
        _ => 16 * rng.below(TABLE_MAX + 4) as u32,
    };
    (addr, len)
}

#[test]
fn a_saved_chain_walks_every_head_exactly_as_virtio_queue_does() {
    let mem = memory();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut noise = vec![0u8; REGION];
    noise.iter_mut().for_each(|b| *b = rng.next() as u8);
    mem.write_slice(&noise, GuestAddress(HIGH_AT)).unwrap();
    let (mut walks, mut empty, mut cut_short, mut longest) = (0, 0, 0, 0);
    for trial in 0..2000 {
        let size = 1u16 << rng.below(9);
        for t in 0..TABLES {
            let n = rng.below(TABLE_MAX + 1);
            let table: Vec<_> = (0..n).map(|_| random_desc(&mut rng, n, 1)).collect();
            write_table(&mem, TABLES_AT + 16 * TABLE_MAX * t, &table);
        }
        let mq = MockSplitQueue::new(&mem, size);
        let table: Vec<_> = (0..size)
            .map(|_| random_desc(&mut rng, u64::from(size), 3))
            .collect();
        write_table(&mem, 0, &table);
        let mut heads: Vec<u16> = if size <= 16 {
            (0..size).collect()
        } else {
            (0..16).map(|_| rng.below(u64::from(size)) as u16).collect()
        };
        heads.extend([size, size.saturating_add(rng.below(100) as u16), u16::MAX]);
        for head in heads {
            let expected = popped(&mem, &mq, head);
            assert_eq!(
                saved(&mem, size, head),
                expected,
                "trial {trial}, queue size {size}, head {head}"
            );
            walks += 1;
            match expected.last() {
                None => empty += 1,
                Some(&(_, _, flags, _)) if flags & NEXT != 0 => cut_short += 1,
                Some(_) => {}
            }
            longest = longest.max(expected.len());
        }
    }
    // the tables are random enough to reach every way a walk ends
    assert!(empty > walks / 20, "{empty} of {walks} walks empty");
    assert!(
        cut_short > walks / 20,
        "{cut_short} of {walks} walks cut short"
    );
    assert!(
        walks - empty - cut_short > walks / 20,
        "too few whole chains"
    );
    assert!(longest >= 256, "the longest walk yielded only {longest}");
}

#[test]
fn a_plain_chain_is_walked_in_chain_order() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 4);
    write_table(
        &mem,
        0,
        &[
            Descriptor::new(0x1000, 8, NEXT, 2),
            Descriptor::new(0x3000, 4, WRITE, 3),
            Descriptor::new(0x2000, 16, NEXT | WRITE, 1),
            Descriptor::new(0x4000, 1, 0, 0),
        ],
    );
    let expected = vec![
        (0x1000, 8, NEXT, 2),
        (0x2000, 16, NEXT | WRITE, 1),
        (0x3000, 4, WRITE, 3),
    ];
    assert_eq!(saved(&mem, 4, 0), expected);
    assert_eq!(popped(&mem, &mq, 0), expected);
    let bufs = ChainBuffers::new(
        SavedChain::new(&mem, GuestAddress(0), 4, 0),
        OutOfOrder::Refuse,
    )
    .unwrap();
    assert_eq!(bufs.readable().len(), 1);
    assert_eq!(bufs.writable().len(), 2);
}

#[test]
fn an_indirect_descriptor_is_followed_into_its_table() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 4);
    // the indirect descriptor's own NEXT is ignored: the chain is its table's
    write_table(
        &mem,
        0,
        &[
            Descriptor::new(0x1000, 8, NEXT, 1),
            Descriptor::new(TABLES_AT, 48, INDIRECT | NEXT, 0),
        ],
    );
    write_table(
        &mem,
        TABLES_AT,
        &[
            Descriptor::new(0x5000, 8, NEXT, 2),
            Descriptor::new(0x7000, 2, WRITE, 0),
            Descriptor::new(0x6000, 512, NEXT | WRITE, 1),
        ],
    );
    let expected = vec![
        (0x5000, 8, NEXT, 2),
        (0x6000, 512, NEXT | WRITE, 1),
        (0x7000, 2, WRITE, 0),
    ];
    assert_eq!(saved(&mem, 4, 1), expected);
    assert_eq!(popped(&mem, &mq, 1), expected);
    // after a direct descriptor, the table's three follow
    assert_eq!(saved(&mem, 4, 0).len(), 4);
    // a table that is not a whole number of descriptors is refused
    write_table(&mem, 16, &[Descriptor::new(TABLES_AT, 40, INDIRECT, 0)]);
    assert_eq!(saved(&mem, 4, 1), vec![]);
    assert_eq!(popped(&mem, &mq, 1), vec![]);
}

#[test]
fn a_nested_indirect_descriptor_ends_the_chain() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 4);
    write_table(&mem, 0, &[Descriptor::new(TABLES_AT, 32, INDIRECT, 0)]);
    write_table(
        &mem,
        TABLES_AT,
        &[
            Descriptor::new(0x5000, 8, NEXT, 1),
            Descriptor::new(TABLES_AT, 32, INDIRECT, 0),
        ],
    );
    let expected = vec![(0x5000, 8, NEXT, 1)];
    assert_eq!(saved(&mem, 4, 0), expected);
    assert_eq!(popped(&mem, &mq, 0), expected);
    let walk = ChainBuffers::new(
        SavedChain::new(&mem, GuestAddress(0), 4, 0),
        OutOfOrder::Keep,
    );
    assert_eq!(walk, Err(ChainError::CutShort));
}

#[test]
fn a_loop_stops_after_a_queue_size_of_descriptors() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 8);
    write_table(
        &mem,
        0,
        &[
            Descriptor::new(0x1000, 8, NEXT, 1),
            Descriptor::new(0x2000, 8, NEXT, 0),
        ],
    );
    let walk = saved(&mem, 8, 0);
    assert_eq!(walk.len(), 8);
    assert_eq!(walk[7], (0x2000, 8, NEXT, 0));
    assert_eq!(popped(&mem, &mq, 0), walk);
    let walk = ChainBuffers::new(
        SavedChain::new(&mem, GuestAddress(0), 8, 0),
        OutOfOrder::Keep,
    );
    assert_eq!(walk, Err(ChainError::CutShort));
}

#[test]
fn a_head_past_the_table_yields_nothing() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 4);
    write_table(&mem, 0, &[Descriptor::new(0x1000, 8, 0, 0); 4]);
    assert_eq!(saved(&mem, 4, 3).len(), 1, "the last head in the table");
    for head in [4, 5, u16::MAX] {
        assert_eq!(saved(&mem, 4, head), vec![], "head {head}");
        assert_eq!(popped(&mem, &mq, head), vec![], "head {head}");
    }
}
