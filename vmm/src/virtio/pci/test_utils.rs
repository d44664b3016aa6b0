//! A transport without KVM for unit tests: plain eventfds for wiring, a device that records its
//! activations, and a driver's setup sequence.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::*;

/// The queue indices each activation got.
pub type Activations = Arc<Mutex<Vec<Vec<usize>>>>;
/// The `(config, queues)` arguments of each [`TransportWiring::update_routes`] call.
pub type RouteUpdates = Arc<Mutex<Vec<(InterruptSource, Vec<InterruptSource>)>>>;
/// Where each queue's notification eventfd is registered now (`None`: nowhere).
pub type NotifyAddresses = Arc<Mutex<Vec<Option<u64>>>>;

/// Eventfds that go nowhere; route updates and notification addresses are recorded.
pub struct TestWiring {
    queues: Vec<(EventFd, EventFd)>,
    config: EventFd,
    updates: RouteUpdates,
    notify: NotifyAddresses,
}

fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

impl TransportWiring for TestWiring {
    fn queue_eventfds(&self, index: usize) -> Option<(&EventFd, &EventFd)> {
        self.queues.get(index).map(|(kick, call)| (kick, call))
    }
    fn notify(&self, index: usize) {
        if let Some((kick, _)) = self.queues.get(index) {
            kick.write(1).expect("kick");
        }
    }
    fn raise_config_interrupt(&self) {
        self.config.write(1).expect("config interrupt");
    }
    fn move_notifications(&mut self, addresses: Option<&[u64]>) {
        let mut notify = self.notify.lock().unwrap();
        for (i, at) in notify.iter_mut().enumerate() {
            *at = addresses.and_then(|a| a.get(i).copied());
        }
    }
    fn update_routes(&self, _msix: &Msix, config: InterruptSource, queues: &[InterruptSource]) {
        self.updates.lock().unwrap().push((config, queues.to_vec()));
    }
}

/// A blk-typed device offering VERSION_1, BLK_F_BLK_SIZE and one transport feature the
/// transport must not offer (ACCESS_PLATFORM).
struct TestDevice {
    max_sizes: Vec<u16>,
    activations: Activations,
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        self.max_sizes.clone()
    }
    fn features(&self) -> u64 {
        // ACCESS_PLATFORM and RING_PACKED, which the transport must not pass on
        F_VERSION_1 | (1 << 6) | (1 << 33) | (1 << 34)
    }
    fn read_config(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _features: u64, queues: &[QueueSetup]) -> Result<(), String> {
        let indices = queues.iter().map(|q| q.index).collect();
        self.activations.lock().unwrap().push(indices);
        Ok(())
    }
    fn reset(&mut self) {}
    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Absent
    }
}

/// A transport at BAR address 0xe000_0000 for a device with queues of `max_sizes`, what the
/// device's activations got, and the wiring's route updates.
pub fn test_transport(max_sizes: &[u16]) -> (VirtioPciDevice, Activations, RouteUpdates) {
    let (transport, activations, updates, _) = wired_transport(max_sizes);
    (transport, activations, updates)
}

/// [`test_transport`], and where the wiring's notification eventfds are registered.
pub fn wired_transport(
    max_sizes: &[u16],
) -> (VirtioPciDevice, Activations, RouteUpdates, NotifyAddresses) {
    let activations = Activations::default();
    let updates = RouteUpdates::default();
    let notify = NotifyAddresses::default();
    let (recorded, registered) = (updates.clone(), notify.clone());
    let device = TestDevice {
        max_sizes: max_sizes.to_vec(),
        activations: activations.clone(),
    };
    let transport = VirtioPciDevice::with_wiring("blk0", Box::new(device), 0xe000_0000, |addrs| {
        *registered.lock().unwrap() = addrs.iter().map(|a| Some(*a)).collect();
        Ok(Box::new(TestWiring {
            queues: addrs.iter().map(|_| (eventfd(), eventfd())).collect(),
            config: eventfd(),
            updates: recorded,
            notify: registered,
        }))
    })
    .expect("transport");
    (transport, activations, updates, notify)
}

/// A `len`-byte write of `value` to the common configuration at `offset`.
pub fn write_common(t: &mut VirtioPciDevice, offset: u64, len: usize, value: u64) {
    t.bar_write(0, COMMON + offset, &value.to_le_bytes()[..len]);
}

/// What a virtio driver does before DRIVER_OK: memory decoding and MSI-X on, vector 1 pointed
/// at the LAPIC and unmasked, VERSION_1 accepted, the config interrupt on vector 0, queue 0
/// (size 64, vector 1, its rings) enabled; queue 1 left alone. Then DRIVER_OK.
pub fn driver_sets_up(t: &mut VirtioPciDevice) {
    t.config_mut().write(4, &[0x06, 0]); // command: memory, bus master
    t.bar_write(0, MSIX_TABLE + 16, &0xfee0_0000u32.to_le_bytes());
    t.bar_write(0, MSIX_TABLE + 24, &0x41u32.to_le_bytes());
    t.bar_write(0, MSIX_TABLE + 28, &0u32.to_le_bytes());
    let control = t.msix_cap + 2;
    t.config_mut().write(control, &0x8000u16.to_le_bytes());
    t.config_written(control);
    write_common(t, 0x14, 1, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER));
    write_common(t, 0x08, 4, 1);
    write_common(t, 0x0c, 4, 1); // VERSION_1 (bit 32)
    write_common(t, 0x08, 4, 0);
    write_common(t, 0x0c, 4, 0);
    write_common(
        t,
        0x14,
        1,
        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
    );
    write_common(t, 0x10, 2, 0);
    write_common(t, 0x16, 2, 0);
    write_common(t, 0x18, 2, 64);
    write_common(t, 0x1a, 2, 1);
    write_common(t, 0x20, 4, 0x1000);
    write_common(t, 0x24, 4, 1);
    write_common(t, 0x28, 4, 0x2000);
    write_common(t, 0x30, 4, 0x3000);
    write_common(t, 0x1c, 2, 1);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    write_common(t, 0x14, 1, u64::from(ok));
}
