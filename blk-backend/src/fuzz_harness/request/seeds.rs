//! Seeds for [`super::request`]: one chain of each request type, served and refused, and the
//! malformed chains and rings a hostile driver can post; built with a small encoder of the
//! harness's input format. The tests check that each seed reaches what it is named for.

use backends::fuzz_harness::driver_seed::raw_desc;

use super::*;

const F_NEXT: u8 = 1;
const F_WRITE: u8 = 2;
const F_INDIRECT: u8 = 4;
/// Control byte bits.
const READ_ONLY: u8 = 1;
const DISK_512: u8 = 1 << 1;
const LIMIT_4K: u8 = 1 << 3;
const QUEUE_16: u8 = 3 << 4;

/// Guest addresses the seeds use.
const HDR: u64 = 0x1000;
const HDR2: u64 = 0x1010;
const STATUS: u64 = 0x1ff0;
const STATUS2: u64 = 0x1ff4;
const DATA: u64 = 0x2000;
const SEGS: u64 = 0x3000;
const INDIRECT: u64 = 0x4000;
/// In the second region.
const BUF: u64 = 0x1_8000;
/// In the hole between the regions, and past the end of memory.
const HOLE: u64 = 0x1_2000;
const BEYOND: u64 = 0x3_0000;

/// A seed being built: descriptors are appended chain by chain.
struct Seed {
    control: u8,
    avail_idx: Option<u8>,
    heads: Vec<u8>,
    records: Vec<[u8; RECORD]>,
    payload: Vec<u8>,
}

fn record(addr: u64, len: u32, flags: u8, next: u8) -> [u8; RECORD] {
    let a = ((addr / 4) as u16).to_le_bytes();
    let l = len.to_le_bytes();
    [a[0], a[1], l[0], l[1], l[2], flags, next]
}

fn header_bytes(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn segment_bytes(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&sectors.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

impl Seed {
    fn new(control: u8) -> Seed {
        Seed {
            control,
            avail_idx: None,
            heads: Vec::new(),
            records: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Post a chain of `(address, length, flags)` descriptors, linked in table order.
    fn chain(mut self, descs: &[(u64, u32, u8)]) -> Seed {
        let first = self.records.len();
        self.heads.push(first as u8);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let (flags, next) = if last {
                (flags, 0)
            } else {
                (flags | F_NEXT, (first + i + 1) as u8)
            };
            self.records.push(record(addr, len, flags, next));
        }
        self
    }

    /// Put `bytes` at guest address `at` (in the payload area).
    fn put(mut self, at: u64, bytes: &[u8]) -> Seed {
        let start = (at - PAYLOAD) as usize;
        if self.payload.len() < start + bytes.len() {
            self.payload.resize(start + bytes.len(), 0);
        }
        self.payload[start..start + bytes.len()].copy_from_slice(bytes);
        self
    }

    fn header(self, at: u64, kind: u32, sector: u64) -> Seed {
        self.put(at, &header_bytes(kind, sector))
    }

    /// One request: a header at `HDR`, `data` descriptors, a status byte at `STATUS`.
    fn request(self, kind: u32, sector: u64, data: &[(u64, u32, u8)]) -> Seed {
        let mut descs = vec![(HDR, 16, 0)];
        descs.extend_from_slice(data);
        descs.push((STATUS, 1, F_WRITE));
        self.header(HDR, kind, sector).chain(&descs)
    }

    fn encode(self) -> Vec<u8> {
        let size = 2usize << ((self.control >> 4) & 3);
        let idx = self.avail_idx.unwrap_or(self.heads.len() as u8);
        let mut out = vec![self.control, idx];
        let mut heads = self.heads;
        heads.resize(size, 0);
        out.extend_from_slice(&heads);
        let mut records = self.records;
        records.resize(size, [0; RECORD]);
        out.extend(records.iter().flatten());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Inputs for [`request`]: one of each request type, served and refused, and the malformed
/// chains a hostile driver can post.
pub fn request_seeds() -> Vec<(String, Vec<u8>)> {
    let w = F_WRITE;
    let s = || Seed::new(QUEUE_16);
    let data = pattern(0x33, 4096);
    let seg = |sector, sectors, flags| segment_bytes(sector, sectors, flags);
    let two_segs = [seg(8, 8, 0), seg(40, 2, 1)].concat();
    let too_many_segs = seg(0, 1, 0).repeat(33);
    let mut seeds = vec![
        ("in", s().request(VIRTIO_BLK_T_IN, 1, &[(BUF, 4096, w)])),
        (
            "out-then-in",
            s().request(VIRTIO_BLK_T_OUT, 2, &[(DATA, 4096, 0)])
                .put(DATA, &data)
                .header(HDR2, VIRTIO_BLK_T_IN, 2)
                .chain(&[(HDR2, 16, 0), (BUF, 4096, w), (STATUS2, 1, w)]),
        ),
        (
            "in-two-buffers-across-regions",
            s().request(VIRTIO_BLK_T_IN, 0, &[(0xf000, 2048, w), (BUF, 2048, w)]),
        ),
        ("flush", s().request(VIRTIO_BLK_T_FLUSH, 0, &[])),
        (
            "flush-with-data",
            s().request(VIRTIO_BLK_T_FLUSH, 0, &[(DATA, 512, 0), (BUF, 512, w)]),
        ),
        (
            "get-id",
            s().request(VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 20, w)]),
        ),
        (
            "get-id-short-buffer",
            s().request(VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 7, w)]),
        ),
        (
            "discard",
            s().request(VIRTIO_BLK_T_DISCARD, 0, &[(SEGS, 16, 0)])
                .put(SEGS, &seg(8, 8, 0)),
        ),
        (
            "write-zeroes-two-segments",
            s().request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(SEGS, 32, 0)])
                .put(SEGS, &two_segs),
        ),
        (
            "discard-with-unmap-flag",
            s().request(VIRTIO_BLK_T_DISCARD, 0, &[(SEGS, 16, 0)])
                .put(SEGS, &seg(0, 8, 1)),
        ),
        (
            "discard-beyond-end",
            s().request(VIRTIO_BLK_T_DISCARD, 0, &[(SEGS, 16, 0)])
                .put(SEGS, &seg(u64::MAX / 512, 8, 0)),
        ),
        (
            "discard-ragged-segments",
            s().request(VIRTIO_BLK_T_DISCARD, 0, &[(SEGS, 12, 0)]),
        ),
        (
            "write-zeroes-too-many-segments",
            s().request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(SEGS, 33 * 16, 0)])
                .put(SEGS, &too_many_segs),
        ),
        ("unknown-type", s().request(77, 0, &[(DATA, 512, 0)])),
        (
            "in-beyond-end",
            s().request(VIRTIO_BLK_T_IN, 128, &[(BUF, 512, w)]),
        ),
        (
            "in-sector-overflow",
            s().request(VIRTIO_BLK_T_IN, u64::MAX, &[(BUF, 512, w)]),
        ),
        (
            "in-partial-sector",
            s().request(VIRTIO_BLK_T_IN, 0, &[(BUF, 500, w)]),
        ),
        (
            "in-too-large",
            Seed::new(QUEUE_16 | LIMIT_4K).request(
                VIRTIO_BLK_T_IN,
                0,
                &[(BUF, 4096, w), (BUF + 4096, 4096, w)],
            ),
        ),
        (
            "in-data-before-status",
            s().header(HDR, VIRTIO_BLK_T_IN, 0)
                .chain(&[(HDR, 16, 0), (BUF, 513, w)]),
        ),
        (
            "out-wrong-direction",
            s().request(VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, w)]),
        ),
        (
            "in-wrong-direction",
            s().request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, 0)]),
        ),
        (
            "no-status",
            s().header(HDR, VIRTIO_BLK_T_OUT, 0)
                .chain(&[(HDR, 16, 0), (DATA, 512, 0)]),
        ),
        ("lone-status", s().chain(&[(STATUS, 1, w)])),
        (
            "status-beyond-memory",
            s().header(HDR, VIRTIO_BLK_T_IN, 0).chain(&[
                (HDR, 16, 0),
                (BUF, 512, w),
                (BEYOND, 1, w),
            ]),
        ),
        (
            "data-in-hole",
            s().request(VIRTIO_BLK_T_OUT, 0, &[(HOLE, 512, 0)]),
        ),
        (
            "data-across-region-end",
            s().request(VIRTIO_BLK_T_IN, 0, &[(0xff00, 512, w)]),
        ),
        (
            "header-short",
            s().header(HDR, VIRTIO_BLK_T_IN, 0)
                .chain(&[(HDR, 8, 0), (STATUS, 1, w)]),
        ),
        (
            "header-writable",
            s().header(HDR, VIRTIO_BLK_T_IN, 0)
                .chain(&[(HDR, 16, w), (STATUS, 1, w)]),
        ),
        (
            "in-over-descriptor-table",
            s().request(VIRTIO_BLK_T_IN, 0, &[(DESC_TABLE, 512, w)])
                .header(HDR2, VIRTIO_BLK_T_IN, 0)
                .chain(&[(HDR2, 16, 0), (BUF, 512, w), (STATUS2, 1, w)]),
        ),
        (
            "in-over-avail-ring",
            s().request(VIRTIO_BLK_T_IN, 0, &[(AVAIL_RING, 512, w)]),
        ),
        (
            "indirect-in",
            s().header(HDR, VIRTIO_BLK_T_IN, 3)
                .chain(&[(INDIRECT, 48, F_INDIRECT)])
                .put(
                    INDIRECT,
                    &[
                        indirect(HDR, 16, F_NEXT, 1),
                        indirect(BUF, 1024, F_NEXT | w, 2),
                        indirect(STATUS, 1, w, 0),
                    ]
                    .concat(),
                ),
        ),
        (
            "indirect-bad-length",
            s().chain(&[(INDIRECT, 40, F_INDIRECT)]),
        ),
        (
            "indirect-nested",
            s().chain(&[(INDIRECT, 16, F_INDIRECT)])
                .put(INDIRECT, &indirect(INDIRECT, 16, F_INDIRECT, 0)),
        ),
        (
            "read-only-mixed",
            Seed::new(QUEUE_16 | READ_ONLY)
                .request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, 0)])
                .header(HDR2, VIRTIO_BLK_T_FLUSH, 0)
                .chain(&[(HDR2, 16, 0), (STATUS2, 1, w)]),
        ),
        (
            "small-disk-in-past-end",
            Seed::new(QUEUE_16 | DISK_512).request(VIRTIO_BLK_T_IN, 0, &[(BUF, 1024, w)]),
        ),
        (
            "queue-of-two-chain-of-three",
            Seed::new(0).request(VIRTIO_BLK_T_IN, 0, &[(BUF, 512, w)]),
        ),
    ];
    // malformed rings and tables
    let mut looped = s().request(VIRTIO_BLK_T_IN, 0, &[(BUF, 512, w)]);
    looped.records[2] = record(STATUS, 1, w | F_NEXT, 0);
    let mut next_past_table = s().request(VIRTIO_BLK_T_IN, 0, &[(BUF, 512, w)]);
    next_past_table.records[0][6] = 200;
    let mut head_past_table = s().request(VIRTIO_BLK_T_IN, 0, &[(BUF, 512, w)]);
    head_past_table.heads[0] = 200;
    let mut idx_past_queue = Seed::new(1 << 4).request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    idx_past_queue.avail_idx = Some(100);
    let mut wraps = s().request(VIRTIO_BLK_T_OUT, 0, &[(0, 512, 0)]);
    wraps.records[1][5] |= WRAP;
    let mut huge = s().request(VIRTIO_BLK_T_IN, 0, &[(BUF, 512, w)]);
    huge.records[1][5] |= HUGE;
    seeds.extend([
        ("chain-loop", looped),
        ("next-past-table", next_past_table),
        ("head-past-table", head_past_table),
        ("avail-idx-past-queue-size", idx_past_queue),
        ("address-wraps", wraps),
        ("length-huge", huge),
    ]);
    seeds
        .into_iter()
        .map(|(name, seed)| (format!("blk-request-{name}"), seed.encode()))
        .collect()
}

/// An indirect table entry (a plain descriptor).
fn indirect(addr: u64, len: u32, flags: u8, next: u16) -> Vec<u8> {
    raw_desc(addr, len, u16::from(flags), next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::fuzz_harness::test_inputs::{is_seed_name, seed_named};
    use std::sync::atomic::Ordering::Relaxed;

    fn seed(name: &str) -> Vec<u8> {
        seed_named(request_seeds(), &format!("blk-request-{name}"))
    }

    /// (chains, ok, ioerr, unsupp, unanswered)
    fn counts(r: &Report) -> (u32, u32, u32, u32, u32) {
        (r.chains, r.ok, r.ioerr, r.unsupp, r.unanswered)
    }

    #[test]
    fn every_seed_runs_and_names_are_file_names() {
        let seeds = request_seeds();
        for (name, bytes) in &seeds {
            assert!(is_seed_name(name), "{name}");
            let r = run(bytes);
            assert!(r.chains >= 1 || name.contains("past-queue"), "{name}");
        }
        let mut names: Vec<_> = seeds.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), seeds.len(), "seed names are unique");
    }

    #[test]
    fn a_write_is_read_back_through_the_disk() {
        let r = run(&seed("out-then-in"));
        assert_eq!(counts(&r), (2, 2, 0, 0, 0));
        let mut back = vec![0u8; 4096];
        r.mem.read_slice(&mut back, GuestAddress(BUF)).unwrap();
        assert_eq!(back, pattern(0x33, 4096));
        let disk = std::fs::read(&r.image.0).unwrap();
        assert_eq!(disk[1024..5120], pattern(0x33, 4096)[..]);
        assert_eq!(r.stats.bytes_written.load(Relaxed), 4096);
    }

    #[test]
    fn reads_see_the_disk_and_get_id_the_serial() {
        let r = run(&seed("indirect-in"));
        assert_eq!(counts(&r), (1, 1, 0, 0, 0));
        let mut back = vec![0u8; 1024];
        r.mem.read_slice(&mut back, GuestAddress(BUF)).unwrap();
        assert_eq!(back, pattern(DISK_PATTERN_SEED, 4096)[1536..2560]);
        let r = run(&seed("get-id"));
        assert_eq!(counts(&r), (1, 1, 0, 0, 0));
        let mut id = [0u8; 20];
        r.mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
        assert_eq!(id[..], SERIAL[..20]);
    }

    #[test]
    fn each_kind_of_refusal_is_reached() {
        for (name, expected) in [
            ("discard", (1, 1, 0, 0, 0)),
            ("write-zeroes-two-segments", (1, 1, 0, 0, 0)),
            ("discard-with-unmap-flag", (1, 0, 0, 1, 0)),
            ("discard-beyond-end", (1, 0, 1, 0, 0)),
            ("write-zeroes-too-many-segments", (1, 0, 1, 0, 0)),
            ("unknown-type", (1, 0, 0, 1, 0)),
            ("in-beyond-end", (1, 0, 1, 0, 0)),
            ("in-sector-overflow", (1, 0, 1, 0, 0)),
            ("in-too-large", (1, 0, 1, 0, 0)),
            ("in-data-before-status", (1, 1, 0, 0, 0)),
            ("no-status", (1, 0, 0, 0, 1)),
            ("status-beyond-memory", (1, 0, 0, 0, 1)),
            ("data-in-hole", (1, 0, 1, 0, 0)),
            ("data-across-region-end", (1, 0, 1, 0, 0)),
            ("header-writable", (1, 0, 1, 0, 0)),
            ("read-only-mixed", (2, 1, 1, 0, 0)),
            ("small-disk-in-past-end", (1, 0, 1, 0, 0)),
            ("chain-loop", (1, 0, 0, 0, 1)),
            ("head-past-table", (1, 0, 0, 0, 1)),
            ("avail-idx-past-queue-size", (0, 0, 0, 0, 0)),
            ("address-wraps", (1, 0, 1, 0, 0)),
        ] {
            assert_eq!(counts(&run(&seed(name))), expected, "{name}");
        }
        let r = run(&seed("read-only-mixed"));
        assert_eq!(r.stats.readonly_refused.load(Relaxed), 1);
    }
}
