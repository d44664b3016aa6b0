//! Seeds for [`super::qcow2_image`]: qcow2 images built the way qemu-img lays them out
//! (`qemu-img check` passes them: a test says so), and crafted ones after the qcow2 unit tests:
//! header fields refused at open, table offsets refused when used, full refcounts, backing
//! names that try to leave the scratch directory.

use super::*;

const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;

/// What to build.
#[derive(Clone, Copy)]
struct Spec {
    version: u32,
    cluster_bits: u32,
    size: u64,
    /// Guest clusters `0..data` hold a pattern.
    data: u64,
    /// The next guest cluster is compressed, the one after it reads as zeroes (v3 flag).
    compressed: bool,
    zero: bool,
    /// One internal snapshot sharing the L2 table and the data clusters.
    snapshot: bool,
    /// Backing file name and format.
    backing: Option<(&'static str, Option<&'static str>)>,
}

const SPEC: Spec = Spec {
    version: 3,
    cluster_bits: 9,
    size: 1 << 20,
    data: 0,
    compressed: false,
    zero: false,
    snapshot: false,
    backing: None,
};

/// A built image and where its tables are (offsets in bytes).
struct Image {
    bytes: Vec<u8>,
    cs: u64,
    reftable: u64,
    refblock: u64,
    l1: u64,
    l2: u64,
    data: u64,
}

impl Image {
    fn poke(&mut self, at: u64, bytes: &[u8]) -> &mut Self {
        let at = at as usize;
        if self.bytes.len() < at + bytes.len() {
            self.bytes.resize(at + bytes.len(), 0);
        }
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }
    fn poke64(&mut self, at: u64, v: u64) -> &mut Self {
        self.poke(at, &v.to_be_bytes())
    }
    fn poke32(&mut self, at: u64, v: u32) -> &mut Self {
        self.poke(at, &v.to_be_bytes())
    }
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

/// Header, refcount table, refcount block and L1 table in clusters 0..4 (as `qemu-img
/// create`), then the L2 table, data clusters, the compressed cluster and the snapshot's L1
/// table and table (as `qemu-img convert` and `snapshot -c`); 16-bit refcounts.
fn build(s: Spec) -> Image {
    let cs = 1u64 << s.cluster_bits;
    let (reftable, refblock, l1) = (cs, 2 * cs, 3 * cs);
    let mut next = 4;
    let mut take = |n: u64| {
        let at = next * cs;
        next += n;
        at
    };
    let mapped = s.data > 0 || s.compressed || s.zero || s.snapshot;
    let l2 = if mapped { take(1) } else { 0 };
    let data = take(s.data);
    let compressed = if s.compressed { take(1) } else { 0 };
    let (snap_l1, snap_table) = if s.snapshot {
        (take(1), take(1))
    } else {
        (0, 0)
    };
    let clusters = next;
    let mut img = Image {
        bytes: vec![0; (clusters * cs) as usize],
        cs,
        reftable,
        refblock,
        l1,
        l2,
        data,
    };
    let copied = if s.snapshot { 0 } else { COPIED };
    let l1_size = s.size.div_ceil(cs * (cs / 8)) as u32;

    // header and extensions
    let mut h = Vec::new();
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&s.version.to_be_bytes());
    h.extend_from_slice(&[0; 12]); // backing name offset and size, set below
    h.extend_from_slice(&s.cluster_bits.to_be_bytes());
    h.extend_from_slice(&s.size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&l1_size.to_be_bytes());
    h.extend_from_slice(&l1.to_be_bytes());
    h.extend_from_slice(&reftable.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&u32::from(s.snapshot).to_be_bytes());
    h.extend_from_slice(&snap_table.to_be_bytes());
    if s.version == 3 {
        h.extend_from_slice(&[0; 24]); // incompatible, compatible, autoclear features
        h.extend_from_slice(&4u32.to_be_bytes()); // refcount_order
        h.extend_from_slice(&104u32.to_be_bytes()); // header_length
    }
    if let Some((name, format)) = s.backing {
        if let Some(f) = format {
            h.extend_from_slice(&0xe279_2acau32.to_be_bytes());
            h.extend_from_slice(&(f.len() as u32).to_be_bytes());
            h.extend_from_slice(f.as_bytes());
            h.resize(h.len().div_ceil(8) * 8, 0);
        }
        h.extend_from_slice(&[0; 8]); // end of extensions
        let at = h.len() as u64;
        h.extend_from_slice(name.as_bytes());
        h[8..16].copy_from_slice(&at.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
    } else {
        h.extend_from_slice(&[0; 8]);
    }
    img.poke(0, &h);

    // refcounts: everything 1, what the snapshot shares 2
    img.poke64(reftable, refblock);
    for c in 0..clusters {
        let shared = s.snapshot && (c * cs == l2 || (c * cs >= data && c * cs < snap_l1));
        let unused = c * cs == l1 && l1_size == 0;
        let refcount = if unused { 0 } else { 1 + u8::from(shared) };
        img.poke(refblock + 2 * c, &[0, refcount]);
    }
    if mapped {
        img.poke64(l1, l2 | copied);
    }
    img.poke(data, &pattern(0x11, (s.data * cs) as usize));
    for i in 0..s.data {
        img.poke64(l2 + 8 * i, (data + i * cs) | copied);
    }
    if s.compressed {
        let deflated = miniz_oxide::deflate::compress_to_vec(&vec![0xc5; cs as usize], 6);
        img.poke(compressed, &deflated);
        let sectors = (deflated.len() as u64).div_ceil(512);
        let shift = 62 - (s.cluster_bits - 8);
        img.poke64(
            l2 + 8 * s.data,
            COMPRESSED | ((sectors - 1) << shift) | compressed,
        );
    }
    if s.zero {
        img.poke64(l2 + 8 * (s.data + 1), ZERO);
    }
    if s.snapshot {
        img.poke64(snap_l1, l2);
        let mut e = Vec::new();
        e.extend_from_slice(&snap_l1.to_be_bytes());
        e.extend_from_slice(&l1_size.to_be_bytes());
        e.extend_from_slice(&1u16.to_be_bytes()); // id "1"
        e.extend_from_slice(&2u16.to_be_bytes()); // name "s1"
        e.extend_from_slice(&[0; 20]); // date, vm clock, vm state size
        e.extend_from_slice(&16u32.to_be_bytes()); // extra data
        e.extend_from_slice(&[0; 8]); // vm_state_size_large
        e.extend_from_slice(&s.size.to_be_bytes()); // disk_size
        e.extend_from_slice(b"1s1");
        img.poke(snap_table, &e);
    }
    img
}

/// The images the seeds are made of: (name, image, whether `qemu-img check` passes it).
fn images() -> Vec<(&'static str, Vec<u8>, bool)> {
    let c4k = Spec {
        cluster_bits: 12,
        data: 4,
        ..SPEC
    };
    let c512 = Spec { data: 6, ..SPEC };
    let mut out = vec![
        // 2 KiB: shorter than the 4 KiB the header is first read with
        ("v3-c512-empty", build(SPEC).take(), true),
        ("v3-c512-data", build(c512).take(), true),
        ("v3-c4k-data", build(c4k).take(), true),
        (
            "v2-c4k-data",
            build(Spec { version: 2, ..c4k }).take(),
            true,
        ),
        (
            "v3-c64k-empty-4m",
            build(Spec {
                cluster_bits: 16,
                size: 4 << 20,
                ..SPEC
            })
            .take(),
            true,
        ),
        (
            "v3-c4k-1g",
            build(Spec {
                size: 1 << 30,
                ..c4k
            })
            .take(),
            true,
        ),
        (
            "v3-c512-compressed-and-zero",
            build(Spec {
                compressed: true,
                zero: true,
                ..c512
            })
            .take(),
            true,
        ),
        (
            "v3-c4k-snapshot",
            build(Spec {
                snapshot: true,
                ..c4k
            })
            .take(),
            true,
        ),
        (
            "v3-c512-backing-raw",
            build(Spec {
                backing: Some((BACKING_NAME, Some("raw"))),
                ..c512
            })
            .take(),
            true,
        ),
        (
            "v2-c512-backing-probed",
            build(Spec {
                version: 2,
                backing: Some((BACKING_NAME, None)),
                ..SPEC
            })
            .take(),
            false, // backing formats are never probed (disk/backing.rs)
        ),
        (
            "v3-c512-size-zero",
            build(Spec { size: 0, ..SPEC }).take(),
            true,
        ),
    ];
    let backing = |name: &'static str, format| {
        build(Spec {
            backing: Some((name, format)),
            ..SPEC
        })
        .take()
    };
    out.extend([
        ("backing-loop", backing(IMAGE_NAME, Some("qcow2")), false),
        (
            "backing-raw-as-qcow2",
            backing(BACKING_NAME, Some("qcow2")),
            false,
        ),
        ("backing-absolute-path", backing("/etc/passwd", None), false),
        (
            "backing-parent-path",
            backing("../../etc/hostname", None),
            false,
        ),
        ("backing-dot-dot", backing("..", None), false),
    ]);
    // header fields refused at open
    let header = |f: &dyn Fn(&mut Image)| {
        let mut img = build(SPEC);
        f(&mut img);
        img.take()
    };
    out.extend([
        (
            "header-length-96",
            header(&|i| _ = i.poke32(100, 96)),
            false,
        ),
        (
            "header-length-odd",
            header(&|i| _ = i.poke32(100, 108)),
            false,
        ),
        (
            "l1-size-huge",
            header(&|i| _ = i.poke32(36, 0x1000_0000)),
            false,
        ),
        ("l1-size-too-small", header(&|i| _ = i.poke32(36, 0)), false),
        (
            "l1-overlaps-reftable",
            header(&|i| _ = i.poke64(40, i.reftable)),
            false,
        ),
        ("l1-past-eof", header(&|i| _ = i.poke64(40, 1 << 30)), false),
        (
            "l1-misaligned",
            header(&|i| _ = i.poke64(40, i.l1 + 8)),
            false,
        ),
        (
            "reftable-clusters-huge",
            header(&|i| _ = i.poke32(56, 1 << 20)),
            false,
        ),
        (
            "reftable-past-eof",
            header(&|i| _ = i.poke64(48, 1 << 30)),
            false,
        ),
        ("refcount-order-7", header(&|i| _ = i.poke32(96, 7)), false),
        ("refcount-order-1", header(&|i| _ = i.poke32(96, 1)), false),
        ("incompat-dirty", header(&|i| _ = i.poke64(72, 1)), false),
        (
            "incompat-unknown",
            header(&|i| _ = i.poke64(72, 1 << 40)),
            false,
        ),
        ("encrypted", header(&|i| _ = i.poke32(32, 1)), false),
        ("cluster-bits-8", header(&|i| _ = i.poke32(20, 8)), false),
        ("cluster-bits-22", header(&|i| _ = i.poke32(20, 22)), false),
        ("version-4", header(&|i| _ = i.poke32(4, 4)), false),
        ("size-huge", header(&|i| _ = i.poke64(24, u64::MAX)), false),
        (
            "snapshots-misaligned",
            header(&|i| _ = i.poke32(60, 1).poke64(64, 0x100)),
            false,
        ),
        (
            "snapshots-too-many",
            header(&|i| _ = i.poke32(60, 1_000_000).poke64(64, 512)),
            false,
        ),
        (
            "snapshots-past-eof",
            header(&|i| _ = i.poke32(60, 2).poke64(64, 1 << 40)),
            false,
        ),
        (
            "extension-data-file",
            header(&|i| _ = i.poke(104, &[0x44, 0x41, 0x54, 0x41, 0, 0, 0, 1])),
            false,
        ),
        (
            "extension-out-of-bounds",
            header(&|i| _ = i.poke(104, &[0, 0, 0, 9, 0x7f, 0xff, 0xff, 0xff])),
            false,
        ),
        (
            "backing-name-past-cluster",
            header(&|i| _ = i.poke64(8, 0x1_0000).poke32(16, 4)),
            false,
        ),
        ("truncated-header", build(SPEC).bytes[..200].to_vec(), false),
    ]);
    // offsets in the tables, checked when used (data entries: guest cluster 3's, where the
    // seeds' first range starts)
    let table = |spec: Spec, f: &dyn Fn(&mut Image)| {
        let mut img = build(spec);
        f(&mut img);
        img.take()
    };
    out.extend([
        (
            "l2-offset-zero",
            table(c4k, &|i| _ = i.poke64(i.l1, COPIED)),
            false,
        ),
        (
            "l2-misaligned",
            table(c4k, &|i| _ = i.poke64(i.l1, COPIED | (i.l2 + 512))),
            false,
        ),
        (
            "l2-past-eof",
            table(c4k, &|i| _ = i.poke64(i.l1, COPIED | 0x1000_0000)),
            false,
        ),
        (
            "l2-on-reftable",
            table(c4k, &|i| _ = i.poke64(i.l1, COPIED | i.reftable)),
            false,
        ),
        (
            "data-misaligned",
            table(c4k, &|i| _ = i.poke64(i.l2 + 24, COPIED | (i.data + 512))),
            false,
        ),
        (
            "data-on-l1",
            table(c4k, &|i| _ = i.poke64(i.l2 + 24, COPIED | i.l1)),
            false,
        ),
        (
            "data-shared-on-reftable",
            table(c4k, &|i| _ = i.poke64(i.l2 + 24, i.reftable)),
            false,
        ),
        (
            "data-past-eof",
            table(c4k, &|i| _ = i.poke64(i.l2 + 24, COPIED | (1 << 40))),
            false,
        ),
        (
            "compressed-past-eof",
            table(c4k, &|i| _ = i.poke64(i.l2 + 24, COMPRESSED | (1 << 30))),
            false,
        ),
        (
            "compressed-on-header",
            table(c4k, &|i| _ = i.poke64(i.l2 + 24, COMPRESSED | 0x100)),
            false,
        ),
        (
            "compressed-garbage",
            table(c4k, &|i| _ = i.poke64(i.l2 + 24, COMPRESSED | i.data)),
            false,
        ),
        (
            "refblock-misaligned",
            table(c4k, &|i| _ = i.poke64(i.reftable, i.refblock + 512)),
            false,
        ),
        (
            "refblock-past-eof",
            table(c4k, &|i| _ = i.poke64(i.reftable, 0x1000_0000)),
            false,
        ),
        (
            "refblock-on-l1",
            table(c4k, &|i| _ = i.poke64(i.reftable, i.l1)),
            false,
        ),
        (
            "refblock-missing",
            table(c4k, &|i| _ = i.poke64(i.reftable, 0)),
            false,
        ),
        (
            "refcount-table-full",
            table(c4k, &|i| {
                let cs = i.cs as usize;
                let (block, reftable) = (i.refblock, i.reftable);
                i.poke(block, &[0, 1].repeat(cs / 2))
                    .poke(reftable, &block.to_be_bytes().repeat(cs / 8));
            }),
            false,
        ),
        (
            "metadata-refcount-zero",
            table(c4k, &|i| _ = i.poke(i.refblock + 6, &[0, 0])),
            false,
        ),
        (
            "l2-shared-by-two-l1-entries",
            table(
                Spec {
                    size: 16 << 20,
                    ..c4k
                },
                &|i| _ = i.poke64(i.l1 + 8, COPIED | i.l2),
            ),
            false,
        ),
    ]);
    out
}

/// The seeds' controls: read-write `qcow2`, zeroing and reopening; the first range at sector
/// 24, 16 sectors (across allocated and unallocated clusters of the data images); the second
/// at sector 128 (64 KiB), pattern seed 0x80.
const SEED_CONTROL: [u8; CONTROL_LEN] = [0x0c, 24, 0, 0, 0, 15, 0, 0x80];

/// Inputs for [`qcow2_image`]: valid images as qemu-img lays them out, and the crafted ones
/// of the qcow2 unit tests (header fields refused at open, table offsets refused when used,
/// full refcounts, backing names that try to leave the directory).
pub fn qcow2_image_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = images()
        .into_iter()
        .map(|(name, image, _)| {
            (
                format!("qcow2-{name}"),
                [image, SEED_CONTROL.to_vec()].concat(),
            )
        })
        .collect();
    // the 1 GiB disk in 2 MiB units: 64 KiB ranges far apart (at 784 MiB and 256 MiB)
    let far = build(Spec {
        cluster_bits: 12,
        size: 1 << 30,
        data: 4,
        ..SPEC
    })
    .take();
    let far_control = [0xcc, 0x88, 0x13, 0, 0, 127, 0, 0x80];
    seeds.push((
        "qcow2-v3-c4k-1g-far".into(),
        [far, far_control.to_vec()].concat(),
    ));
    let mut raw = pattern(7, 4096);
    raw.extend_from_slice(&[0x0e, 1, 0, 0, 0, 7, 0, 2]); // auto: served as raw
    seeds.push(("qcow2-not-qcow2-probed-raw".into(), raw));
    let read_only = [
        build(Spec { data: 6, ..SPEC }).take(),
        vec![0x09, 2, 0, 0, 0, 3, 0, 1],
    ];
    seeds.push(("qcow2-v3-c512-data-read-only".into(), read_only.concat()));
    seeds.push(("qcow2-empty".into(), Vec::new()));
    seeds
}

#[cfg(test)]
mod tests;
