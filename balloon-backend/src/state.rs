//! The balloon's state that outlives a frontend connection: the target, what the guest says
//! it has in the balloon, the latest guest statistics, the counters, and the way to reach
//! the current connection (its frontend channel for config changes, its device for stats).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use backends::frontend_channel::FrontendChannel;

use crate::vhu_balloon::VhostUserBalloon;
use crate::virtio_balloon::{config_bytes, CONFIG_LEN, PAGE_SIZE};

/// The smallest guest the balloon will squeeze a guest to.
pub const MIN_TARGET: u64 = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the guest's memory size is not known yet (no frontend has connected)")]
    NoGuest,
    #[error("target {target} bytes is above the guest's memory ({ram} bytes)")]
    AboveMax { target: u64, ram: u64 },
    #[error("target {target} bytes is below the minimum of {MIN_TARGET} bytes")]
    BelowMin { target: u64 },
    #[error("the guest's driver has not given a statistics buffer (no driver, or no STATS_VQ)")]
    NoStatsBuffer,
    #[error("the guest did not answer within {0} ms")]
    StatsTimeout(u64),
}

/// Why a config space restored by the frontend was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("{len} bytes at offset {offset} do not fit the {CONFIG_LEN}-byte config space")]
    OutOfBounds { offset: u32, len: usize },
}

#[derive(Default)]
pub struct Counters {
    pub inflated_pages: AtomicU64,
    pub deflated_pages: AtomicU64,
    pub released_bytes: AtomicU64,
    pub reported_bytes: AtomicU64,
    /// Page numbers or ranges outside guest RAM.
    pub invalid: AtomicU64,
    /// Pages inflated twice, or deflated while not in the balloon.
    pub duplicate: AtomicU64,
    pub malformed_chains: AtomicU64,
}

#[derive(Default)]
struct StatsSlot {
    values: BTreeMap<&'static str, u64>,
    at: Option<Instant>,
    generation: u64,
}

#[derive(Default)]
pub struct BalloonState {
    /// `num_pages`: how many 4 KiB pages the device asks the guest to give.
    pub num_pages: AtomicU32,
    /// `actual`: how many the driver says it has given.
    pub actual: AtomicU32,
    /// Guest RAM in bytes (from the memory table).
    pub ram: AtomicU64,
    /// Whether the state above is this process's own: a target was set, a driver wrote
    /// `actual`, or a restored config space was taken. A later restore is then ignored: it
    /// can only be older (the vmm's copy of what this process served).
    settled: AtomicBool,
    pub counters: Counters,
    pub channel: Mutex<FrontendChannel>,
    pub device: Mutex<Weak<VhostUserBalloon>>,
    stats: Mutex<StatsSlot>,
    stats_arrived: Condvar,
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl BalloonState {
    /// Ask the guest to shrink (or grow back) to `target` bytes of usable memory.
    pub fn set_target(&self, target: u64) -> Result<(), ControlError> {
        let ram = self.ram.load(Ordering::Relaxed);
        if ram == 0 {
            return Err(ControlError::NoGuest);
        }
        if target > ram {
            return Err(ControlError::AboveMax { target, ram });
        }
        if target < MIN_TARGET {
            return Err(ControlError::BelowMin { target });
        }
        let pages = ((ram - target) / PAGE_SIZE) as u32;
        self.num_pages.store(pages, Ordering::Relaxed);
        self.settled.store(true, Ordering::Release);
        tracing::info!(target, num_pages = pages, "new balloon target");
        match self.channel.lock().map(|c| c.config_changed()) {
            Ok(Ok(true)) => {}
            _ => tracing::warn!(
                "the frontend could not be told of the new target; the guest sees it when its \
                 driver next reads the configuration"
            ),
        }
        Ok(())
    }

    /// The driver says it has `pages` in the balloon (its write of `actual`).
    pub fn driver_wrote_actual(&self, pages: u32) {
        self.actual.store(pages, Ordering::Relaxed);
        self.settled.store(true, Ordering::Release);
    }

    /// Take `bytes` at `offset` of the config space the frontend restores (SET_CONFIG with
    /// LIVE_MIGRATION): the target and `actual` a killed predecessor served, so that the
    /// driver, which still holds those pages, sees no change. Only a process with no state of
    /// its own takes it (see `settled`); whether it was taken.
    pub fn restore_config(&self, offset: u32, bytes: &[u8]) -> Result<bool, RestoreError> {
        let out_of_bounds = || RestoreError::OutOfBounds {
            offset,
            len: bytes.len(),
        };
        let start = usize::try_from(offset).map_err(|_| out_of_bounds())?;
        let end = start
            .checked_add(bytes.len())
            .filter(|&end| !bytes.is_empty() && end <= CONFIG_LEN)
            .ok_or_else(out_of_bounds)?;
        let fresh = self
            .settled
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if !fresh {
            tracing::info!(
                "a restored config space ignored: this process's balloon state is newer"
            );
            return Ok(false);
        }
        let mut space = config_bytes(
            self.num_pages.load(Ordering::Relaxed),
            self.actual.load(Ordering::Relaxed),
        );
        space[start..end].copy_from_slice(bytes);
        let word = |at: usize| {
            u32::from_le_bytes([space[at], space[at + 1], space[at + 2], space[at + 3]])
        };
        let (num_pages, actual) = (word(0), word(4));
        self.take_pages(num_pages, actual);
        Ok(true)
    }

    /// Take a target and `actual` restored from the frontend (its config space or a
    /// snapshot's device state).
    pub fn take_pages(&self, num_pages: u32, actual: u32) {
        self.num_pages.store(num_pages, Ordering::Relaxed);
        self.actual.store(actual, Ordering::Relaxed);
        self.settled.store(true, Ordering::Release);
        tracing::info!(
            num_pages,
            actual_pages = actual,
            "balloon state restored from the frontend"
        );
    }

    pub fn target(&self) -> u64 {
        let ram = self.ram.load(Ordering::Relaxed);
        ram.saturating_sub(u64::from(self.num_pages.load(Ordering::Relaxed)) * PAGE_SIZE)
    }

    pub fn balloon_bytes(&self) -> u64 {
        u64::from(self.actual.load(Ordering::Relaxed)) * PAGE_SIZE
    }

    /// New statistics from the guest.
    pub fn stats_received(&self, values: Vec<(&'static str, u64)>) {
        if let Ok(mut s) = self.stats.lock() {
            s.values = values.into_iter().collect();
            s.at = Some(Instant::now());
            s.generation += 1;
        }
        self.stats_arrived.notify_all();
    }

    /// Fresh statistics: the device hands the guest back its stats buffer, and the driver
    /// answers with a new one; at most `timeout` is spent waiting for it.
    pub fn request_stats(
        &self,
        timeout: Duration,
    ) -> Result<(BTreeMap<&'static str, u64>, Duration), ControlError> {
        let device = self.device.lock().ok().and_then(|d| d.upgrade());
        let generation = self.stats.lock().map(|s| s.generation).unwrap_or(0);
        if !device.is_some_and(|d| d.ask_for_stats()) {
            return Err(ControlError::NoStatsBuffer);
        }
        let deadline = Instant::now() + timeout;
        let mut slot = self
            .stats
            .lock()
            .map_err(|_| ControlError::StatsTimeout(0))?;
        while slot.generation == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ControlError::StatsTimeout(timeout.as_millis() as u64));
            }
            slot = match self.stats_arrived.wait_timeout(slot, left) {
                Ok((s, _)) => s,
                Err(_) => return Err(ControlError::StatsTimeout(0)),
            };
        }
        let age = slot.at.map_or(Duration::ZERO, |t| t.elapsed());
        Ok((slot.values.clone(), age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_and_turned_into_pages() {
        let s = BalloonState::default();
        assert_eq!(s.set_target(1 << 30), Err(ControlError::NoGuest));
        s.ram.store(1 << 30, Ordering::Relaxed);
        assert_eq!(
            s.set_target(2 << 30),
            Err(ControlError::AboveMax {
                target: 2 << 30,
                ram: 1 << 30
            })
        );
        assert_eq!(
            s.set_target(1 << 20),
            Err(ControlError::BelowMin { target: 1 << 20 })
        );
        assert_eq!(s.set_target(256 << 20), Ok(()));
        assert_eq!(s.num_pages.load(Ordering::Relaxed), (768 << 20) / 4096);
        assert_eq!(s.target(), 256 << 20);
        assert_eq!(
            s.request_stats(Duration::from_millis(10)),
            Err(ControlError::NoStatsBuffer)
        );
    }

    #[test]
    fn a_restored_config_space_becomes_the_target_and_actual() {
        let s = BalloonState::default();
        let (num_pages, actual) = ((768u32 << 20) / 4096, 190_000u32);
        assert_eq!(
            s.restore_config(0, &config_bytes(num_pages, actual)),
            Ok(true)
        );
        assert_eq!(s.num_pages.load(Ordering::Relaxed), num_pages);
        assert_eq!(s.actual.load(Ordering::Relaxed), actual);
        // the memory table comes after: the target is then 256 MiB of 1 GiB
        s.ram.store(1 << 30, Ordering::Relaxed);
        assert_eq!(s.target(), 256 << 20);
        assert_eq!(s.balloon_bytes(), u64::from(actual) * 4096);
        // a second restore (the vmm's copy, maybe older) does not undo what was taken
        assert_eq!(s.restore_config(0, &config_bytes(1, 2)), Ok(false));
        assert_eq!(s.num_pages.load(Ordering::Relaxed), num_pages);
    }

    #[test]
    fn a_restore_out_of_the_space_is_refused_and_changes_nothing() {
        let s = BalloonState::default();
        for (offset, len) in [(0, 9), (4, 5), (8, 1), (0, 0), (u32::MAX, 4), (7, 2)] {
            assert_eq!(
                s.restore_config(offset, &vec![0xff; len]),
                Err(RestoreError::OutOfBounds { offset, len }),
                "{offset} {len}"
            );
        }
        assert_eq!(s.num_pages.load(Ordering::Relaxed), 0);
        assert_eq!(s.actual.load(Ordering::Relaxed), 0);
        // still a fresh process: a part of the space is taken, the rest kept
        assert_eq!(s.restore_config(4, &7u32.to_le_bytes()), Ok(true));
        assert_eq!(s.actual.load(Ordering::Relaxed), 7);
        assert_eq!(s.num_pages.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_process_with_its_own_state_ignores_a_restore() {
        let set = BalloonState::default();
        set.ram.store(1 << 30, Ordering::Relaxed);
        set.set_target(512 << 20).unwrap();
        assert_eq!(set.restore_config(0, &config_bytes(1, 1)), Ok(false));
        assert_eq!(set.target(), 512 << 20, "the target set here wins");

        let written = BalloonState::default();
        written.driver_wrote_actual(5);
        assert_eq!(written.restore_config(0, &config_bytes(1, 1)), Ok(false));
        assert_eq!(written.actual.load(Ordering::Relaxed), 5);
    }
}
