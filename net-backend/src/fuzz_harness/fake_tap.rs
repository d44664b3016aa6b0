//! The tap the queue harness gives the device: a datagram socket pair per tap queue (one
//! datagram = one packet, as a tap reads and writes, as `queue_tests.rs` does), both ends
//! non-blocking, so nothing reaches a network and nothing waits.

use std::os::unix::net::UnixDatagram;

/// The fake tap: for each tap queue, our end (the "kernel's") and the device's.
pub(super) struct FakeTap {
    pub host: Vec<UnixDatagram>,
    pub dev: Vec<UnixDatagram>,
}

impl FakeTap {
    pub(super) fn new(queues: usize) -> Option<FakeTap> {
        let mut tap = FakeTap {
            host: Vec::new(),
            dev: Vec::new(),
        };
        for _ in 0..queues {
            let (host, dev) = UnixDatagram::pair().ok()?;
            host.set_nonblocking(true).ok()?;
            dev.set_nonblocking(true).ok()?;
            tap.host.push(host);
            tap.dev.push(dev);
        }
        Some(tap)
    }

    /// Take every packet the device wrote; how many.
    pub(super) fn drain(&self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for host in &self.host {
            while host.recv(buf).is_ok() {
                n += 1;
            }
        }
        n
    }
}
