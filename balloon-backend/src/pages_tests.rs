//! Page release against a fake backing that records what was punched: small and huge pages,
//! hostile page numbers, duplicates, reporting ranges.

use std::cell::RefCell;
use std::io;

use crate::pages::{report, Backing, Balloon, Region};

/// Guest RAM: [0, 256 MiB) and [4 GiB, 4 GiB + 64 MiB) unless said otherwise, with
/// `page_size` backing pages.
struct Fake {
    page_size: u64,
    regions: Vec<(u64, u64)>,
    punched: RefCell<Vec<(u64, u64)>>,
}

impl Fake {
    fn new(page_size: u64) -> Fake {
        Fake::with_regions(page_size, &[(0, 256 << 20), (4 << 30, 64 << 20)])
    }

    fn with_regions(page_size: u64, regions: &[(u64, u64)]) -> Fake {
        Fake {
            page_size,
            regions: regions.to_vec(),
            punched: RefCell::new(Vec::new()),
        }
    }
}

impl Backing for Fake {
    fn region(&self, gpa: u64) -> Option<Region> {
        self.regions
            .iter()
            .find(|(s, l)| gpa >= *s && gpa < s + l)
            .map(|&(start, len)| Region {
                start,
                len,
                page_size: self.page_size,
            })
    }
    fn punch(&self, gpa: u64, len: u64) -> io::Result<()> {
        assert_eq!(gpa % self.page_size, 0, "unaligned punch");
        assert_eq!(len % self.page_size, 0, "unaligned punch length");
        self.punched.borrow_mut().push((gpa, len));
        Ok(())
    }
}

#[test]
fn inflated_pages_are_punched_in_runs_and_hostile_ones_skipped() {
    let fake = Fake::new(4096);
    let mut b = Balloon::new();
    // a run of 3, one lone page, one outside RAM (the 32-bit hole), one far beyond, a dup
    let pfns = [10, 11, 12, 100, 0x0a_0000, u32::MAX, 11];
    let out = b.inflate(&pfns, &fake);
    assert_eq!(out.pages, 4);
    assert_eq!(out.invalid, 2);
    assert_eq!(out.duplicate, 1);
    assert_eq!(out.released, 4 * 4096);
    assert_eq!(
        *fake.punched.borrow(),
        vec![(10 * 4096, 3 * 4096), (100 * 4096, 4096)]
    );
    // inflating them again frees nothing more
    let again = b.inflate(&[10, 12], &fake);
    assert_eq!((again.pages, again.duplicate, again.released), (0, 2, 0));
    // deflate: in the balloon, not in it, outside RAM
    let d = b.deflate(&[10, 13, 0x0a_0000], &fake);
    assert_eq!((d.pages, d.duplicate, d.invalid), (1, 1, 1));
    assert_eq!(b.count(), 3);
    // the high region works too
    let high = b.inflate(&[((4u64 << 30) >> 12) as u32], &fake);
    assert_eq!(high.released, 4096);
}

#[test]
fn huge_pages_go_back_only_when_whole() {
    let huge = 2 << 20;
    let fake = Fake::new(huge);
    let mut b = Balloon::new();
    let first_half: Vec<u32> = (512..768).collect();
    let out = b.inflate(&first_half, &fake);
    assert_eq!(
        (out.pages, out.released),
        (256, 0),
        "half a huge page stays"
    );
    assert!(fake.punched.borrow().is_empty());
    let second_half: Vec<u32> = (768..1024).collect();
    let out = b.inflate(&second_half, &fake);
    assert_eq!(out.released, huge);
    assert_eq!(*fake.punched.borrow(), vec![(2 << 20, huge)]);
}

#[test]
fn reported_ranges_free_only_whole_backing_pages_inside_ram() {
    let fake = Fake::new(2 << 20);
    // 4 MiB starting 1 MiB into a huge page: only the one whole huge page inside is freed
    let out = report(3 << 20, 4 << 20, &fake);
    assert_eq!(out.released, 2 << 20);
    assert_eq!(*fake.punched.borrow(), vec![(4 << 20, 2 << 20)]);
    // crossing the end of RAM, outside RAM, overflowing: refused
    assert_eq!(report(255 << 20, 4 << 20, &fake).invalid, 1);
    assert_eq!(report(1 << 40, 4096, &fake).invalid, 1);
    assert_eq!(report(u64::MAX - 10, 4096, &fake).invalid, 1);
    assert_eq!(fake.punched.borrow().len(), 1);
}

/// Two runs of one request that complete the same huge page release it once (it was punched,
/// and counted, once per run).
#[test]
fn a_huge_page_completed_by_two_runs_is_released_once() {
    let huge = 2 << 20;
    let fake = Fake::new(huge);
    let mut b = Balloon::new();
    let most: Vec<u32> = (512..1024).filter(|p| *p != 600 && *p != 700).collect();
    assert_eq!(b.inflate(&most, &fake).released, 0);
    let out = b.inflate(&[600, 700], &fake);
    assert_eq!((out.pages, out.released), (2, huge));
    assert_eq!(*fake.punched.borrow(), vec![(2 << 20, huge)]);
}

/// The bookkeeping follows the pages in the balloon, not how high they are: a page in the
/// high region costs what a page at 0 does, and deflating everything gives it all back.
#[test]
fn the_bookkeeping_grows_with_the_pages_in_the_balloon_not_their_addresses() {
    let fake = Fake::new(4096);
    let mut b = Balloon::new();
    assert_eq!((b.count(), b.words()), (0, 0));
    let high = ((4u64 << 30) >> 12) as u32;
    let pfns = [3, high, high + 1, high + 64, u32::MAX];
    let out = b.inflate(&pfns, &fake);
    assert_eq!((out.pages, out.invalid), (4, 1));
    assert_eq!(
        (b.count(), b.words()),
        (4, 3),
        "one word per 64 pages touched"
    );
    let d = b.deflate(&[3, high, high + 1, high + 64], &fake);
    assert_eq!(d.pages, 4);
    assert_eq!((b.count(), b.words()), (0, 0));
}

/// A backing page that is not a whole word of the bookkeeping (8 KiB: two small pages) goes
/// back once both its halves are in, and a 1 GiB one (4096 words) once its last page is.
#[test]
fn backing_pages_smaller_and_larger_than_a_word_go_back_when_whole() {
    let fake = Fake::new(8192);
    let mut b = Balloon::new();
    assert_eq!(b.inflate(&[11], &fake).released, 0);
    assert_eq!(b.inflate(&[10], &fake).released, 8192);
    assert_eq!(*fake.punched.borrow(), vec![(10 * 4096, 8192)]);

    let gib = 1u64 << 30;
    let fake = Fake::with_regions(gib, &[(gib, 2 * gib)]);
    let mut b = Balloon::new();
    let pages = (gib >> 12) as u32;
    let first: Vec<u32> = (pages..2 * pages).collect();
    let (last, most) = first.split_at(1);
    assert_eq!(b.inflate(most, &fake).released, 0);
    assert!(fake.punched.borrow().is_empty());
    assert_eq!(b.inflate(last, &fake).released, gib);
    assert_eq!(*fake.punched.borrow(), vec![(gib, gib)]);
    assert_eq!(b.words(), 4096);
}
