//! Per-backend counters, shared by all queue threads and logged on SIGUSR1.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters since the process started.
#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub get_ids: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_IOERR because the I/O itself failed.
    pub io_errors: AtomicU64,
    /// Malformed chains and requests outside the disk (answered IOERR, or dropped when the
    /// chain had no status byte).
    pub bad_requests: AtomicU64,
    /// Requests of a type we do not implement (answered UNSUPP).
    pub unsupported: AtomicU64,
    /// Writes refused because the disk is read-only.
    pub readonly_refused: AtomicU64,
    /// Requests being processed right now.
    pub in_flight: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |c: &AtomicU64| c.load(Relaxed);
        write!(
            f,
            "reads={} writes={} flushes={} discards={} write_zeroes={} get_ids={} \
             bytes_read={} bytes_written={} io_errors={} bad_requests={} unsupported={} \
             readonly_refused={} in_flight={}",
            v(&self.reads),
            v(&self.writes),
            v(&self.flushes),
            v(&self.discards),
            v(&self.write_zeroes),
            v(&self.get_ids),
            v(&self.bytes_read),
            v(&self.bytes_written),
            v(&self.io_errors),
            v(&self.bad_requests),
            v(&self.unsupported),
            v(&self.readonly_refused),
            v(&self.in_flight),
        )
    }
}
