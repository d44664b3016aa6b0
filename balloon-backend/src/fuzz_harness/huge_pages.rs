//! `pages.rs` on its own, against a backing that checks every punch: the balloon's page
//! bookkeeping with 2 MiB backing pages (a hugetlbfs guest), which the queue harness's memfd
//! cannot give it. A model of the balloon says what each request must do, and every outcome
//! and punch is held to it: counts exact, punches aligned to the backing's pages, inside one
//! region, covering only pages in the balloon (inflate) or inside the range (report), and
//! each huge page given back once, when its last small page goes in.
//!
//! Input (after configuration byte 0 with bit 7 set): byte 1: bit 0: 2 MiB backing pages (else
//! 4 KiB); then operations, `op: u8` % 3: 0 inflate, 1 deflate (`n: u8` page frame numbers,
//! each `p: u16` → p % 8192, or 0xffff and a raw `u32`); 2 report (`at: u16` → the range
//! starts at at × 512, or 0xffff: 4 KiB below the end of the address space; `len: u32`).

use std::cell::RefCell;
use std::io;

use super::input::{Input, Seed};
use super::queues::MAX_OPS;
use crate::pages::{report, Backing, Balloon, Outcome, Region};
use crate::virtio_balloon::{PAGE_SHIFT, PAGE_SIZE};

/// Guest RAM: [0, 8 MiB) and, after a hole, [12 MiB, 16 MiB).
const REGIONS: [(u64, u64); 2] = [(0, 8 << 20), (12 << 20, 4 << 20)];
const END: u64 = 16 << 20;
const HUGE: u64 = 2 << 20;

pub(super) const OP_INFLATE: u8 = 0;
pub(super) const OP_DEFLATE: u8 = 1;
pub(super) const OP_REPORT: u8 = 2;
/// `at` of a report near the end of the address space.
pub(super) const AT_TOP: u16 = u16::MAX;

struct Checked {
    page_size: u64,
    punched: RefCell<Vec<(u64, u64)>>,
}

impl Backing for Checked {
    fn region(&self, gpa: u64) -> Option<Region> {
        REGIONS
            .iter()
            .find(|(s, l)| gpa >= *s && gpa - s < *l)
            .map(|&(start, len)| Region {
                start,
                len,
                page_size: self.page_size,
            })
    }

    fn punch(&self, gpa: u64, len: u64) -> io::Result<()> {
        self.punched.borrow_mut().push((gpa, len));
        Ok(())
    }
}

/// Which 4 KiB pages are in the balloon, as the requests so far put them.
struct Model {
    pages: Vec<bool>,
    page_size: u64,
}

impl Model {
    fn has(&self, pfn: u64) -> bool {
        self.pages.get(pfn as usize).copied().unwrap_or(false)
    }

    /// Backing pages wholly in the balloon.
    fn whole(&self) -> Vec<u64> {
        let per = (self.page_size >> PAGE_SHIFT) as usize;
        (0..self.pages.len() / per)
            .filter(|&i| self.pages[i * per..(i + 1) * per].iter().all(|p| *p))
            .map(|i| i as u64 * self.page_size)
            .collect()
    }
}

fn read_pfns(input: &mut Input) -> Vec<u32> {
    let n = input.u8();
    (0..n)
        .map(|_| match input.u16() {
            u16::MAX => input.u32(),
            p => u32::from(p % 8192),
        })
        .collect()
}

/// Seeds: the operations' bytes.
pub(super) fn write_pfns(seed: &mut Seed, op: u8, pfns: &[u32]) {
    seed.u8(op).u8(pfns.len() as u8);
    for &p in pfns {
        match u16::try_from(p) {
            Ok(p) if p < 8192 => seed.u16(p),
            _ => seed.u16(u16::MAX).u32(p),
        };
    }
}

pub(super) fn run(config: u8, input: &mut Input) {
    let page_size = if config & 1 != 0 { HUGE } else { PAGE_SIZE };
    let backing = Checked {
        page_size,
        punched: RefCell::new(Vec::new()),
    };
    let mut balloon = Balloon::new();
    let mut model = Model {
        pages: vec![false; (END >> PAGE_SHIFT) as usize],
        page_size,
    };
    input.run_ops(MAX_OPS, |input| {
        backing.punched.borrow_mut().clear();
        match input.u8() % 3 {
            OP_INFLATE => {
                let pfns = read_pfns(input);
                let before = model.whole();
                let expected = expect_inflate(&mut model, &pfns, &backing);
                let out = balloon.inflate(&pfns, &backing);
                let newly_whole = model.whole().len() - before.len();
                check_punches(&backing, &out, |gpa| model.has(gpa >> PAGE_SHIFT));
                assert_eq!(
                    (out.pages, out.invalid, out.duplicate),
                    expected,
                    "{pfns:?}"
                );
                assert_eq!(
                    out.released,
                    newly_whole as u64 * page_size,
                    "each backing page is given back once, when it is wholly in the balloon \
                     ({pfns:?} gave back {:?})",
                    backing.punched.borrow()
                );
            }
            OP_DEFLATE => {
                let pfns = read_pfns(input);
                let expected = expect_deflate(&mut model, &pfns, &backing);
                let out = balloon.deflate(&pfns, &backing);
                assert_eq!(
                    (out.pages, out.invalid, out.duplicate),
                    expected,
                    "{pfns:?}"
                );
                assert!(
                    backing.punched.borrow().is_empty(),
                    "deflate gives nothing back"
                );
            }
            _ => {
                let gpa = match input.u16() {
                    AT_TOP => u64::MAX - 4095,
                    at => u64::from(at) * 512,
                };
                let len = u64::from(input.u32());
                let out = report(gpa, len, &backing);
                check_punches(&backing, &out, |a| a >= gpa && a - gpa < len);
                let end = gpa.checked_add(len);
                let inside = backing
                    .region(gpa)
                    .zip(end)
                    .is_some_and(|(r, end)| end <= r.start + r.len);
                assert_eq!(out.invalid, u64::from(!inside), "report {gpa:#x}+{len:#x}");
                let released = if inside {
                    let first = gpa.div_ceil(page_size) * page_size;
                    ((gpa + len) / page_size * page_size).saturating_sub(first)
                } else {
                    0
                };
                assert_eq!(out.released, released, "report {gpa:#x}+{len:#x}");
            }
        }
    });
    assert_eq!(
        balloon.count(),
        model.pages.iter().filter(|p| **p).count() as u64
    );
}

/// What inflating `pfns` must count (pages, invalid, duplicate); the model takes them in.
fn expect_inflate(model: &mut Model, pfns: &[u32], backing: &Checked) -> (u64, u64, u64) {
    let (mut pages, mut invalid, mut duplicate) = (0, 0, 0);
    for &pfn in pfns {
        let gpa = u64::from(pfn) << PAGE_SHIFT;
        if backing.region(gpa).is_none() {
            invalid += 1;
        } else if model.has(u64::from(pfn)) {
            duplicate += 1;
        } else {
            model.pages[pfn as usize] = true;
            pages += 1;
        }
    }
    (pages, invalid, duplicate)
}

/// What deflating `pfns` must count; the model lets them go.
fn expect_deflate(model: &mut Model, pfns: &[u32], backing: &Checked) -> (u64, u64, u64) {
    let (mut pages, mut invalid, mut duplicate) = (0, 0, 0);
    for &pfn in pfns {
        let gpa = u64::from(pfn) << PAGE_SHIFT;
        if backing.region(gpa).is_none() {
            invalid += 1;
        } else if !model.has(u64::from(pfn)) {
            duplicate += 1;
        } else {
            model.pages[pfn as usize] = false;
            pages += 1;
        }
    }
    (pages, invalid, duplicate)
}

/// Every punch of the last request: aligned to the backing's pages, inside one region,
/// disjoint from the others, covering only pages `may_free` allows; and `released` their sum.
fn check_punches(backing: &Checked, out: &Outcome, may_free: impl Fn(u64) -> bool) {
    let ps = backing.page_size;
    let mut punched = backing.punched.borrow().clone();
    punched.sort_unstable();
    for (i, &(gpa, len)) in punched.iter().enumerate() {
        assert!(
            len > 0 && gpa % ps == 0 && len % ps == 0,
            "unaligned punch {gpa:#x}+{len:#x}"
        );
        let region = backing.region(gpa).expect("a punch outside guest RAM");
        assert!(
            gpa + len <= region.start + region.len,
            "a punch past its region"
        );
        assert!(
            (gpa..gpa + len).step_by(PAGE_SIZE as usize).all(&may_free),
            "a punch of pages the guest did not give: {gpa:#x}+{len:#x}"
        );
        if let Some(&(prev, prev_len)) = i.checked_sub(1).and_then(|p| punched.get(p)) {
            assert!(prev + prev_len <= gpa, "{gpa:#x} punched twice");
        }
    }
    assert_eq!(out.released, punched.iter().map(|p| p.1).sum::<u64>());
}
