//! The stand-in for a device whose backend could not be reached when the VM started.

use super::{QueueSetup, VirtioDevice, VirtioDeviceState};

/// Stands in for a device whose backend could not be reached at start: it offers no features
/// (not even VIRTIO_F_VERSION_1), so the guest's driver rejects it cleanly, and it reports
/// DEVICE_NEEDS_RESET. The VM and its other devices run normally.
pub struct AbsentDevice {
    pub device_type: u32,
}

impl VirtioDevice for AbsentDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![1]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _features: u64, _queues: &[QueueSetup]) -> Result<(), String> {
        Err("the device has no backend".into())
    }
    fn reset(&mut self) {}
    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Absent
    }
    /// A snapshot is refused: restoring it would connect a backend behind a device the guest
    /// saw broken (or never reach one), so it could not bring the VM back as it was.
    fn suspend(&mut self) -> Result<(), String> {
        Err(
            "its backend was unreachable when the VM started, so the guest has no working \
             device here: a snapshot could not bring it back (start the VM again with its \
             backend running)"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_of_an_absent_device_is_refused_with_the_reason() {
        let mut absent = AbsentDevice { device_type: 2 };
        let why = absent.suspend().unwrap_err();
        assert!(why.contains("backend was unreachable"), "{why}");
        assert!(absent.resume().is_ok());
    }
}
