//! The common configuration structure (virtio 1.x, section 4.1.4.3) at the start of the BAR:
//! feature negotiation, the device status, and the selected queue's registers.

use super::VirtioPciDevice;
use crate::virtio::msix::NO_VECTOR;
use crate::virtio::STATUS_DRIVER_OK;

/// Bytes of the structure.
pub(super) const LEN: u64 = 0x38;

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC_LO: u64 = 0x20;
const QUEUE_DESC_HI: u64 = 0x24;
const QUEUE_AVAIL_LO: u64 = 0x28;
const QUEUE_AVAIL_HI: u64 = 0x2c;
const QUEUE_USED_LO: u64 = 0x30;
const QUEUE_USED_HI: u64 = 0x34;

/// A register value from the bytes a guest wrote (at most 4; fewer are zero-extended).
fn to_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl VirtioPciDevice {
    /// A guest read of `data.len()` bytes at `off`. No register is wider than 32 bits (the
    /// 64-bit ring addresses are a low and a high register), so a wider access is split into
    /// 32-bit ones, the lower address first, as QEMU does.
    pub(super) fn common_read_bytes(&mut self, off: u64, data: &mut [u8]) {
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let v = self.common_read(off + 4 * i as u64).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// A guest write of `data` at `off`, split into 32-bit writes like a read.
    pub(super) fn common_write_bytes(&mut self, off: u64, data: &[u8]) {
        for (i, chunk) in data.chunks(4).enumerate() {
            self.common_write(off + 4 * i as u64, to_u32(chunk));
        }
    }

    fn common_read(&mut self, off: u64) -> u32 {
        let half = |v: u64, hi: bool| if hi { (v >> 32) as u32 } else { v as u32 };
        let q = self.queues.get(usize::from(self.queue_select));
        match off {
            DEVICE_FEATURE_SELECT => self.device_feature_select,
            DEVICE_FEATURE => match self.device_feature_select {
                0 | 1 => half(self.features, self.device_feature_select == 1),
                _ => 0,
            },
            DRIVER_FEATURE_SELECT => self.driver_feature_select,
            DRIVER_FEATURE => match self.driver_feature_select {
                0 | 1 => half(self.driver_features, self.driver_feature_select == 1),
                _ => 0,
            },
            CONFIG_MSIX_VECTOR => u32::from(self.msix_config),
            NUM_QUEUES => self.queues.len() as u32,
            DEVICE_STATUS => u32::from(self.status),
            CONFIG_GENERATION => u32::from(self.config_generation),
            QUEUE_SELECT => u32::from(self.queue_select),
            QUEUE_SIZE => q.map_or(0, |q| u32::from(q.size)),
            QUEUE_MSIX_VECTOR => q.map_or(u32::from(NO_VECTOR), |q| u32::from(q.vector)),
            QUEUE_ENABLE => q.map_or(0, |q| u32::from(q.enabled)),
            // queue i notifies at NOTIFY + i * NOTIFY_MULTIPLIER
            QUEUE_NOTIFY_OFF => u32::from(self.queue_select),
            QUEUE_DESC_LO | QUEUE_DESC_HI => q.map_or(0, |q| half(q.desc, off == QUEUE_DESC_HI)),
            QUEUE_AVAIL_LO | QUEUE_AVAIL_HI => {
                q.map_or(0, |q| half(q.avail, off == QUEUE_AVAIL_HI))
            }
            QUEUE_USED_LO | QUEUE_USED_HI => q.map_or(0, |q| half(q.used, off == QUEUE_USED_HI)),
            _ => 0,
        }
    }

    fn common_write(&mut self, off: u64, v: u32) {
        let set_half = |field: &mut u64, hi: bool| {
            *field = if hi {
                (*field & 0xffff_ffff) | (u64::from(v) << 32)
            } else {
                (*field & !0xffff_ffff) | u64::from(v)
            }
        };
        // a queue's setup is frozen once the device runs
        let writable = self.status & STATUS_DRIVER_OK == 0;
        match off {
            DEVICE_FEATURE_SELECT => self.device_feature_select = v,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = v,
            DRIVER_FEATURE if self.driver_feature_select < 2 => {
                let hi = self.driver_feature_select == 1;
                set_half(&mut self.driver_features, hi);
            }
            CONFIG_MSIX_VECTOR => {
                self.msix_config = v as u16;
                self.update_routes();
            }
            DEVICE_STATUS => self.set_status(v as u8),
            QUEUE_SELECT => self.queue_select = v as u16,
            QUEUE_SIZE if writable => {
                if let Some(q) = self.selected() {
                    q.size = (v as u16).min(q.max);
                }
            }
            QUEUE_MSIX_VECTOR => {
                let vectors = self.queues.len() as u16 + 1;
                if let Some(q) = self.selected() {
                    q.vector = if (v as u16) < vectors {
                        v as u16
                    } else {
                        NO_VECTOR
                    };
                }
                self.update_routes();
            }
            QUEUE_ENABLE if writable => {
                let (name, index) = (self.name.clone(), self.queue_select);
                if let Some(q) = self.selected() {
                    // a split ring's size is a power of two (virtio 1.2, 2.7): anything else
                    // never reaches the backend, where it would end the connection
                    if v == 1 && !q.size.is_power_of_two() {
                        tracing::warn!(device = %name, queue = index, size = q.size, "the driver enabled a queue whose size is not a power of two: it stays disabled");
                    } else {
                        q.enabled = v == 1;
                    }
                }
            }
            QUEUE_DESC_LO..=QUEUE_USED_HI if writable => {
                if let Some(q) = self.selected() {
                    let field = match off & !4 {
                        QUEUE_DESC_LO => &mut q.desc,
                        QUEUE_AVAIL_LO => &mut q.avail,
                        _ => &mut q.used,
                    };
                    set_half(field, off & 4 != 0);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_utils::{test_transport, write_common};
    use super::*;
    use crate::pci::PciDevice;
    use crate::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FEATURES_OK};

    #[test]
    fn a_64_bit_access_is_two_32_bit_ones() {
        let (mut t, _, _) = test_transport(&[8]);
        let rings = [
            (QUEUE_DESC_LO, 0x1_2345_6000u64),
            (QUEUE_AVAIL_LO, 0x2_0000_1000),
            (QUEUE_USED_LO, 0xffff_ffff_ffff_f000),
        ];
        for (reg, addr) in rings {
            write_common(&mut t, reg, 8, addr);
            let mut hi = [0u8; 4];
            t.bar_read(0, reg + 4, &mut hi);
            assert_eq!(
                u32::from_le_bytes(hi),
                (addr >> 32) as u32,
                "high half of the 64-bit write to {reg:#x}"
            );
            let mut whole = [0u8; 8];
            t.bar_read(0, reg, &mut whole);
            assert_eq!(u64::from_le_bytes(whole), addr, "64-bit read of {reg:#x}");
        }
        let q = t.state().queues[0];
        assert_eq!(
            (q.desc_table, q.avail_ring, q.used_ring),
            (rings[0].1, rings[1].1, rings[2].1)
        );
        // the feature windows are 32 bits wide: a 64-bit read of the select register reads
        // the select (0) and, above it, the selected half of the features (BLK_F_BLK_SIZE)
        let mut d = [0u8; 8];
        t.bar_read(0, DEVICE_FEATURE_SELECT, &mut d);
        assert_eq!(u64::from_le_bytes(d), (1 << 6) << 32);
    }

    #[test]
    fn a_queue_size_that_is_not_a_power_of_two_is_never_enabled() {
        let (mut t, _, _) = test_transport(&[256]);
        for (size, enabled) in [(0, 0), (100, 0), (255, 0), (64, 1)] {
            write_common(&mut t, QUEUE_SIZE, 2, size);
            write_common(&mut t, QUEUE_ENABLE, 2, 1);
            let mut d = [0u8; 2];
            t.bar_read(0, QUEUE_ENABLE, &mut d);
            assert_eq!(u16::from_le_bytes(d), enabled, "queue size {size}");
            write_common(&mut t, QUEUE_ENABLE, 2, 0);
        }
    }

    #[test]
    fn driver_ok_without_features_ok_activates_nothing() {
        let (mut t, activations, _) = test_transport(&[8]);
        write_common(&mut t, QUEUE_SIZE, 2, 8);
        write_common(&mut t, QUEUE_ENABLE, 2, 1);
        // the driver accepts a feature the device did not offer: FEATURES_OK does not stick
        write_common(&mut t, DRIVER_FEATURE_SELECT, 4, 1);
        write_common(&mut t, DRIVER_FEATURE, 4, 1 << 31);
        let (ack, driver) = (u64::from(STATUS_ACKNOWLEDGE), u64::from(STATUS_DRIVER));
        write_common(
            &mut t,
            DEVICE_STATUS,
            1,
            ack | driver | u64::from(STATUS_FEATURES_OK),
        );
        write_common(
            &mut t,
            DEVICE_STATUS,
            1,
            ack | driver | u64::from(STATUS_FEATURES_OK | STATUS_DRIVER_OK),
        );
        assert!(
            activations.lock().unwrap().is_empty(),
            "activated without FEATURES_OK"
        );
    }
}
