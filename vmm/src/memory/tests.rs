//! Each RAM mode gives the pages it reports, seen in the process's own `/proc/self/smaps`.

use vm_memory::{Bytes, GuestAddress};

use super::*;

const SIZE: u64 = 8 << 20;

fn ram(cfg: &str) -> GuestRam {
    GuestRam::new(&format!("8M{cfg}").parse().unwrap()).unwrap()
}

/// Write every page of guest RAM through the vmm's mapping (as the guest's faults would).
fn touch(ram: &GuestRam) {
    for off in (0..SIZE).step_by(4096) {
        ram.memory().write_obj(0x5au8, GuestAddress(off)).unwrap();
    }
}

/// The value of `field` (e.g. `Rss:`) in the /proc/self/smaps entry of the mapping that
/// starts at `host`.
fn smaps_field(host: u64, field: &str) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let header = format!("{host:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
    lines.next().expect("the mapping is in smaps");
    lines
        // the entry's own lines: `Name: value`, up to the next mapping's header
        .take_while(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.ends_with(':'))
        })
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} for the mapping at {host:#x}"))
        .trim()
        .to_string()
}

/// `field` in kB.
fn smaps_kib(host: u64, field: &str) -> u64 {
    let value = smaps_field(host, field);
    let kib = value.trim_end_matches("kB").trim().parse();
    kib.unwrap_or_else(|_| panic!("{field} {value} is not in kB"))
}

fn host_address(ram: &GuestRam) -> u64 {
    ram.regions()[0].3
}

#[test]
fn the_default_mode_gives_the_pages_it_reports() {
    let ram = ram("");
    assert!(ram.memfd().is_some(), "the default RAM is a shared file");
    touch(&ram);
    let host = host_address(&ram);
    let pmd = smaps_kib(host, "ShmemPmdMapped:") + smaps_kib(host, "FilePmdMapped:");
    eprintln!(
        "this host's default RAM: {} pages, {pmd} kB PMD-mapped",
        ram.pages()
    );
    match ram.pages() {
        RamPages::Thp2M => assert!(pmd >= 2048, "2M-thp reported, {pmd} kB PMD-mapped"),
        RamPages::Hugetlb2M => assert!(smaps_kib(host, "Shared_Hugetlb:") >= 2048),
        RamPages::Small4K => assert_eq!(pmd, 0),
    }
    // what a backend maps (the file, from offset 0) holds what the guest wrote
    let mut byte = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(ram.memfd().unwrap(), &mut byte, SIZE - 4096)
        .unwrap();
    assert_eq!(byte[0], 0x5a);
}

#[test]
fn hugepages_off_is_a_plain_memfd_in_small_pages() {
    let ram = ram(",hugepages=off");
    touch(&ram);
    let host = host_address(&ram);
    let pmd = smaps_kib(host, "ShmemPmdMapped:");
    match ram.pages() {
        RamPages::Small4K => assert_eq!(pmd, 0),
        // the host's shmem_enabled gives huge pages to every memfd
        other => assert_eq!(other, RamPages::Thp2M),
    }
}

#[test]
fn private_ram_has_no_file_and_gets_anonymous_huge_pages_where_the_host_allows() {
    let ram = ram(",shared=off");
    assert!(ram.memfd().is_none());
    touch(&ram);
    let anon_huge = smaps_kib(host_address(&ram), "AnonHugePages:");
    match ram.pages() {
        RamPages::Thp2M => assert!(anon_huge >= 2048, "{anon_huge} kB"),
        other => assert_eq!((other, anon_huge), (RamPages::Small4K, 0)),
    }
}

/// The `VmFlags` of the mapping that starts at `host` (`mg`: KSM may merge it, `hg`: huge
/// pages advised).
fn vm_flags(host: u64) -> Vec<String> {
    let flags = smaps_field(host, "VmFlags:");
    flags.split_whitespace().map(String::from).collect()
}

#[test]
fn mergeable_private_ram_is_offered_to_ksm() {
    let private = ram(",shared=off,mergeable=on");
    let flags = vm_flags(host_address(&private));
    assert!(flags.iter().any(|f| f == "mg"), "{flags:?}");
    if private.pages() == RamPages::Thp2M {
        assert!(flags.iter().any(|f| f == "hg"), "{flags:?}");
    }
    // the shared default is not: KSM would skip it, and the config refuses the option there
    let shared = ram("");
    assert!(!vm_flags(host_address(&shared)).iter().any(|f| f == "mg"));
}
