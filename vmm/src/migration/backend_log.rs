//! The pages the backends write during a pre-copy: one log file for all of them (one bit
//! per 4 KiB page of guest physical memory, byte `page / 8`, bit `page % 8`), handed over
//! with SET_LOG_BASE ([`crate::vhost_user::VhostUserDevice::set_log`]). Each round hands a
//! fresh file to every backend first, then reads the old one: a write made before a
//! backend switched is in the old file, one made after in the new.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use super::dirty::{Slot, PAGE};
use crate::vhost_user::VhostUserDevice;

pub struct BackendLog {
    devices: Vec<Arc<Mutex<VhostUserDevice>>>,
    slots: Vec<Slot>,
    current: File,
    size: u64,
    /// Each device's reconnect count when logging began: a backend that came back meanwhile
    /// is a new process that logged nothing before it.
    reconnects: Vec<u64>,
}

fn lock(d: &Mutex<VhostUserDevice>) -> std::sync::MutexGuard<'_, VhostUserDevice> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// A zeroed log file of `size` bytes.
fn new_log(size: u64) -> std::io::Result<File> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"splitvisor-dirty-log".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size)?;
    Ok(f)
}

impl BackendLog {
    /// Whether every device's backend can log its writes.
    pub fn possible(devices: &[Arc<Mutex<VhostUserDevice>>]) -> bool {
        devices.iter().all(|d| lock(d).can_log())
    }

    /// Start logging in every backend.
    pub fn start(
        devices: Vec<Arc<Mutex<VhostUserDevice>>>,
        slots: Vec<Slot>,
    ) -> Result<BackendLog, String> {
        let end = slots.iter().map(|s| s.gpa + s.size).max().unwrap_or(0);
        let size = end.div_ceil(PAGE).div_ceil(8).next_multiple_of(PAGE);
        let current = new_log(size).map_err(|e| format!("cannot make the dirty log: {e}"))?;
        let reconnects = devices
            .iter()
            .map(|d| lock(d).link_status().reconnects())
            .collect();
        let log = BackendLog {
            devices,
            slots,
            current,
            size,
            reconnects,
        };
        for d in &log.devices {
            let mut d = lock(d);
            // on a failure, `log` is dropped: every device switches logging off again
            d.set_log(&log.current, size).map_err(|e| e.to_string())?;
        }
        Ok(log)
    }

    /// The file offsets of the pages the backends wrote since the last call (or the start).
    pub fn take(&mut self) -> Result<Vec<u64>, String> {
        let fresh = new_log(self.size).map_err(|e| format!("cannot make the dirty log: {e}"))?;
        for (d, before) in self.devices.iter().zip(&self.reconnects) {
            let mut d = lock(d);
            if d.link_status().reconnects() != *before {
                return Err(format!(
                    "device {}: its backend reconnected during the migration, so its writes \
                     were not all logged",
                    d.name()
                ));
            }
            d.set_log(&fresh, self.size).map_err(|e| e.to_string())?;
        }
        let old = std::mem::replace(&mut self.current, fresh);
        let mut bits = vec![0u8; self.size as usize];
        old.read_exact_at(&mut bits, 0)
            .map_err(|e| format!("cannot read the dirty log: {e}"))?;
        Ok(pages_of(&bits, &self.slots))
    }
}

impl Drop for BackendLog {
    fn drop(&mut self) {
        for d in &self.devices {
            lock(d).stop_log();
        }
    }
}

/// The file offsets of the pages whose bits are set in `bits` (by guest address), in order.
fn pages_of(bits: &[u8], slots: &[Slot]) -> Vec<u64> {
    let mut pages = Vec::new();
    for (i, &byte) in bits.iter().enumerate() {
        let mut b = byte;
        while b != 0 {
            let gpa = (i as u64 * 8 + u64::from(b.trailing_zeros())) * PAGE;
            b &= b - 1;
            if let Some(s) = slots
                .iter()
                .find(|s| (s.gpa..s.gpa + s.size).contains(&gpa))
            {
                pages.push(s.file_offset + (gpa - s.gpa));
            }
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_become_file_offsets_across_the_hole() {
        let slots = super::super::dirty::slots(&[(0, 0, 1 << 20, 0), (1, 4 << 30, 1 << 20, 0)]);
        let mut bits = vec![0u8; ((4u64 << 30) / PAGE / 8) as usize + 32];
        bits[0] = 0b1000_0001; // pages 0 and 7
        let high = ((4u64 << 30) / PAGE) as usize + 3;
        bits[high / 8] |= 1 << (high % 8);
        bits[1000] = 1; // a page in no slot (the hole): ignored
        assert_eq!(
            pages_of(&bits, &slots),
            vec![0, 7 * PAGE, (1 << 20) + 3 * PAGE]
        );
    }
}
