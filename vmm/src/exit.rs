//! How a VM ends, and the exit status `splitvisor` reports for it.

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};

/// Why the VM stopped. The first reason reported wins, except that a reset gives way to any
/// other reason (a stop signal during a reboot still stops the VM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5): exit status 0.
    PowerOff,
    /// The guest reset or rebooted (ACPI reset register, i8042 reset, triple fault): 3.
    Reset,
    /// A vCPU failed (KVM internal error, failed entry, guest crash event): 4.
    Crash(String),
    /// Stopped by SIGTERM, SIGINT or SIGHUP: 5.
    Signal(i32),
    /// Stopped through the API (`vm.stop`, a hard stop): 5.
    Stopped,
    /// Migrated: the destination confirmed that the VM runs there (`vm.send-migration`): 6.
    Migrated,
}

/// Exit statuses of `splitvisor`; 1 is any setup or vmm error, 2 a bad command line.
pub const EXIT_ERROR: i32 = 1;

impl VmExit {
    pub fn status(&self) -> i32 {
        match self {
            VmExit::PowerOff => 0,
            VmExit::Reset => 3,
            VmExit::Crash(_) => 4,
            VmExit::Signal(_) | VmExit::Stopped => 5,
            VmExit::Migrated => 6,
        }
    }
}

/// Shared by vCPU threads, devices and the signal thread; the main thread waits on it.
#[derive(Default)]
pub struct ExitHandle {
    reason: Mutex<Option<VmExit>>,
    cond: Condvar,
    /// In-place reboots so far (a migration that sees one is refused: the kernel was loaded
    /// into RAM again, which no dirty log sees).
    resets: std::sync::atomic::AtomicU64,
    /// `vm.reboot {"acpi": true}` pressed the power button: the guest's power-off is taken as
    /// a reboot (libvirt's reboot of a guest without an agent).
    power_off_reboots: std::sync::atomic::AtomicBool,
}

impl ExitHandle {
    pub fn request(&self, mut exit: VmExit) {
        if exit == VmExit::PowerOff && self.power_off_reboots.swap(false, Ordering::SeqCst) {
            tracing::info!("the guest powered off for a reboot: booting it again");
            exit = VmExit::Reset;
        }
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if reason.is_none() || (*reason == Some(VmExit::Reset) && exit != VmExit::Reset) {
            tracing::info!(?exit, "VM exit requested");
            *reason = Some(exit);
            self.cond.notify_all();
        }
    }

    /// After an in-place reboot: forget the reset so that the VM runs again. False if another
    /// exit (a stop signal, say) was requested meanwhile; that one stands.
    pub fn restart(&self) -> bool {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if *reason == Some(VmExit::Reset) {
            *reason = None;
            self.resets.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Whether the guest's next power-off is a reboot (set by an ACPI reboot request, cleared
    /// by a shutdown request).
    pub fn set_power_off_reboots(&self, reboot: bool) {
        self.power_off_reboots.store(reboot, Ordering::SeqCst);
    }

    /// How many times the VM was reset in place.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    pub fn requested(&self) -> bool {
        self.reason.lock().map(|r| r.is_some()).unwrap_or(true)
    }

    pub fn wait(&self) -> VmExit {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(exit) = reason.clone() {
                return exit;
            }
            reason = self.cond.wait(reason).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_off_after_an_acpi_reboot_request_is_a_reset_once() {
        let exit = ExitHandle::default();
        exit.set_power_off_reboots(true);
        exit.request(VmExit::PowerOff);
        assert_eq!(exit.wait(), VmExit::Reset);
        assert!(exit.restart());
        assert_eq!(exit.resets(), 1);
        // taken once: the next power-off powers off
        exit.request(VmExit::PowerOff);
        assert_eq!(exit.wait(), VmExit::PowerOff);
    }

    #[test]
    fn a_shutdown_request_after_a_reboot_request_powers_off() {
        let exit = ExitHandle::default();
        exit.set_power_off_reboots(true);
        exit.set_power_off_reboots(false);
        exit.request(VmExit::PowerOff);
        assert_eq!(exit.wait(), VmExit::PowerOff);
    }
}
