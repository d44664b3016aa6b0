//! Harness: what a hostile driver can put on a request queue — a descriptor table, an avail
//! ring and the buffers they point at — served by the device's real path (`request::parse`,
//! then `BlkDevice::process`, the synchronous path of `vhu_blk.rs`) against a raw disk.
//!
//! Input format (bytes past the end of the input read as zero):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | control: bit 0 read-only disk; bits 1-2 disk size (64 KiB, 512 B, 8 KiB, 256 KiB); bit 3 requests limited to 4 KiB (else 1 MiB); bits 4-5 queue size 2 << n |
//! | 1 | the avail ring's `idx`: how many chains the driver posts |
//! | queue size × 1 | the avail ring's entries: head indices |
//! | queue size × 7 | the descriptor table, one record each: address u16 LE (× 4), length u24 LE, flags, next |
//! | the rest | copied to guest memory at `PAYLOAD` (headers, data, segments, indirect tables) |
//!
//! A record's flags: bits 0-2 are the descriptor's NEXT, WRITE and INDIRECT flags; bit 3 counts
//! the address down from `u64::MAX` (ranges that wrap); bit 4 sets the length's top byte to
//! 0xff. Record addresses reach 256 KiB: guest memory is two 64 KiB regions, `0..0x10000` (the
//! rings, then the payload) and `0x18000..0x28000`, with a hole between and nothing after.
//! At most twice the queue size of chains are served (data the device writes may land on the
//! avail ring and post more).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{pattern, ScratchFile};
use crate::blk::BlkDevice;
use crate::disk::{self, Format, OpenOptions};
use crate::request;
use crate::stats::Stats;
use crate::virtio_blk::*;

mod seeds;
pub use seeds::request_seeds;

const REGIONS: [(u64, usize); 2] = [(0, 0x1_0000), (0x1_8000, 0x1_0000)];
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x200;
const PAYLOAD: u64 = 0x1000;
/// Where the first region ends: the payload stops there.
const PAYLOAD_END: u64 = 0x1_0000;
const MAX_QUEUE_SIZE: u16 = 16;
const RECORD: usize = 7;
const DISK_SIZES: [usize; 4] = [64 << 10, 512, 8 << 10, 256 << 10];
/// Longer than the 20 bytes of an id: GET_ID cuts it.
const SERIAL: &[u8] = b"splitvisor-fuzz-serial";
/// The disk's first bytes (the rest reads as zeroes).
const DISK_PATTERN_LEN: usize = 64 << 10;
const DISK_PATTERN_SEED: u8 = 0x5a;

/// Record flag bits beyond the descriptor's own.
const WRAP: u8 = 1 << 3;
const HUGE: u8 = 1 << 4;

/// Run one input (format in the module documentation).
pub fn request(data: &[u8]) {
    run(data);
}

/// What became of the chains an input posted.
pub(super) struct Report {
    /// Chains taken from the avail ring.
    pub chains: u32,
    /// Answered with each status, or left without one (no usable status byte).
    pub ok: u32,
    pub ioerr: u32,
    pub unsupp: u32,
    pub unanswered: u32,
    /// For tests to look into: the device's counters, guest memory and the disk image (kept
    /// while the report lives).
    #[cfg(test)]
    pub stats: Arc<Stats>,
    #[cfg(test)]
    pub mem: GuestMemoryMmap,
    #[cfg(test)]
    pub image: ScratchFile,
}

fn byte(data: &[u8], i: usize) -> u8 {
    data.get(i).copied().unwrap_or(0)
}

/// One descriptor table entry from its record.
fn descriptor(r: [u8; RECORD]) -> [u8; 16] {
    let mut addr = u64::from(u16::from_le_bytes([r[0], r[1]])) * 4;
    let mut len = u32::from_le_bytes([r[2], r[3], r[4], 0]);
    if r[5] & WRAP != 0 {
        addr = u64::MAX - addr;
    }
    if r[5] & HUGE != 0 {
        len |= 0xff00_0000;
    }
    let flags = u16::from(r[5] & 7);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&addr.to_le_bytes());
    out[8..12].copy_from_slice(&len.to_le_bytes());
    out[12..14].copy_from_slice(&flags.to_le_bytes());
    out[14..].copy_from_slice(&u16::from(r[6]).to_le_bytes());
    out
}

pub(super) fn run(data: &[u8]) -> Report {
    let control = byte(data, 0);
    let readonly = control & 1 != 0;
    let disk_size = DISK_SIZES[usize::from((control >> 1) & 3)];
    let max_request_bytes = if control & 8 != 0 { 4096 } else { 1 << 20 };
    let size = 2u16 << ((control >> 4) & 3);
    let heads_at = 2;
    let descs_at = heads_at + usize::from(size);
    let payload_at = descs_at + usize::from(size) * RECORD;

    let ranges = REGIONS.map(|(a, len)| (GuestAddress(a), len));
    let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory for the harness");
    for i in 0..usize::from(size) {
        let at = descs_at + i * RECORD;
        let record = std::array::from_fn(|k| byte(data, at + k));
        let addr = GuestAddress(DESC_TABLE + 16 * i as u64);
        mem.write_slice(&descriptor(record), addr)
            .expect("the descriptor table is in guest memory");
    }
    let mut avail = vec![0u8, 0, byte(data, 1), 0];
    avail.extend((0..usize::from(size)).flat_map(|i| [byte(data, heads_at + i), 0]));
    mem.write_slice(&avail, GuestAddress(AVAIL_RING))
        .expect("the avail ring is in guest memory");
    let payload = data.get(payload_at..).unwrap_or(&[]);
    let payload = &payload[..payload.len().min((PAYLOAD_END - PAYLOAD) as usize)];
    mem.write_slice(payload, GuestAddress(PAYLOAD))
        .expect("the payload fits its region");

    let mut bytes = pattern(DISK_PATTERN_SEED, disk_size.min(DISK_PATTERN_LEN));
    bytes.resize(disk_size, 0);
    let image = ScratchFile::new("request", &bytes).expect("a scratch disk image");
    let opts = OpenOptions {
        readonly,
        direct: false,
        format: Format::Raw,
        backing_dirs: Vec::new(),
    };
    let device = BlkDevice {
        disk: crate::blk::DiskSlot::new(
            disk::open(&image.0, &opts).expect("the scratch raw image opens"),
        ),
        readonly,
        io_in_flight: Default::default(),
        serial: SERIAL.to_vec(),
        max_request_bytes,
        stats: Arc::new(Stats::default()),
    };
    // the open disk keeps the file: its name can go now (nothing is left behind if the fuzzer
    // stops this process on a crash); tests read the file back through the report
    #[cfg(not(test))]
    drop(image);

    let mut queue = Queue::new(MAX_QUEUE_SIZE).expect("a valid queue size");
    queue.set_size(size);
    queue
        .try_set_desc_table_address(GuestAddress(DESC_TABLE))
        .and_then(|()| queue.try_set_avail_ring_address(GuestAddress(AVAIL_RING)))
        .and_then(|()| queue.try_set_used_ring_address(GuestAddress(USED_RING)))
        .expect("aligned ring addresses");
    queue.set_ready(true);

    let mut report = Report {
        chains: 0,
        ok: 0,
        ioerr: 0,
        unsupp: 0,
        unanswered: 0,
        #[cfg(test)]
        stats: device.stats.clone(),
        #[cfg(test)]
        mem: mem.clone(),
        #[cfg(test)]
        image,
    };
    // bounded by the harness, not by the driver (see the module documentation)
    for _ in 0..2 * size {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        // where the device answers (the same parse the device makes, on the same memory)
        let status = match request::parse(chain.clone(), &device.limits()) {
            Ok(req) => Some(req.status),
            Err(bad) => bad.status,
        };
        let len = device.process(chain, &mem);
        let _ = queue.add_used(&mem, head, len);
        report.chains += 1;
        match status
            .and_then(|s| mem.read_obj::<u8>(s).ok())
            .map(u32::from)
        {
            Some(VIRTIO_BLK_S_OK) => report.ok += 1,
            Some(VIRTIO_BLK_S_IOERR) => report.ioerr += 1,
            Some(VIRTIO_BLK_S_UNSUPP) => report.unsupp += 1,
            _ => report.unanswered += 1,
        }
    }
    // every request the device started, it finished
    let in_flight = device.stats.in_flight.load(Ordering::Relaxed);
    assert_eq!(in_flight, 0, "requests left in flight after process()");
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_empty_inputs_are_served() {
        for len in 0..64 {
            run(&vec![0xffu8; len]);
            run(&vec![0u8; len]);
        }
    }
}
