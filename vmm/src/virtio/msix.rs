//! MSI-X: the capability, the vector table and the pending-bit array a device exposes in a BAR.

use serde::{Deserialize, Serialize};

use crate::irq_routing::MsiMessage;

pub const CAP_ID: u8 = 0x11;
pub const CAP_LEN: usize = 12;
const ENTRY_SIZE: u64 = 16;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;
/// "No vector" in virtio's msix_config / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;

#[derive(Clone, Copy, Default)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

pub struct Msix {
    entries: Vec<Entry>,
    control: u16,
}

/// The MSI-X table and mask state, for a snapshot (part of the virtio-pci transport's state,
/// [`super::pci::persist::VirtioPciState`]). Captured by [`Msix::state`]; restoring it is the
/// snapshot's work, which checks `version` first. The pending-bit array is not kept: the vmm
/// never latches a pending bit (see [`super::pci::kvm_wiring`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    /// [`MsixState::VERSION`] when captured.
    pub version: u32,
    /// The capability's message control word: bit 15 MSI-X enable, bit 14 function mask.
    pub control: u16,
    /// One entry per vector, in vector order.
    pub entries: Vec<MsixEntryState>,
}

impl MsixState {
    pub const VERSION: u32 = 1;
}

/// One vector's table entry as the guest wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixEntryState {
    pub address: u64,
    pub data: u32,
    /// Vector control: bit 0 masks the vector.
    pub vector_control: u32,
}

impl Msix {
    /// `vectors` entries, all masked, MSI-X disabled.
    pub fn new(vectors: u16) -> Msix {
        Msix {
            entries: vec![
                Entry {
                    ctrl: VECTOR_MASKED,
                    ..Default::default()
                };
                usize::from(vectors)
            ],
            control: 0,
        }
    }

    /// The capability bytes (table and PBA in `bar`) and the bytes the guest may write.
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> (Vec<u8>, Vec<u8>) {
        let size = (self.entries.len() as u16).saturating_sub(1);
        let mut cap = vec![CAP_ID, 0];
        cap.extend_from_slice(&size.to_le_bytes());
        cap.extend_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        cap.extend_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        let writable = vec![0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0];
        (cap, writable)
    }

    /// The message control word after a config write.
    pub fn set_control(&mut self, control: u16) {
        self.control = control;
    }

    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(e) = self.entries.get((offset / ENTRY_SIZE) as usize) else {
            return;
        };
        let words = [e.addr_lo, e.addr_hi, e.data, e.ctrl];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = (offset % ENTRY_SIZE) as usize;
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    /// Returns the vector whose entry changed.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Option<u16> {
        let vector = (offset / ENTRY_SIZE) as usize;
        let e = self.entries.get_mut(vector)?;
        let start = (offset % ENTRY_SIZE) as usize;
        let mut bytes = [0u8; 16];
        for (i, w) in [e.addr_lo, e.addr_hi, e.data, e.ctrl].iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        for (i, d) in data.iter().enumerate() {
            if let Some(b) = bytes.get_mut(start + i) {
                *b = *d;
            }
        }
        let word =
            |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
        *e = Entry {
            addr_lo: word(0),
            addr_hi: word(1),
            data: word(2),
            ctrl: word(3),
        };
        Some(vector as u16)
    }

    /// The table and mask state as they are now.
    pub fn state(&self) -> MsixState {
        MsixState {
            version: MsixState::VERSION,
            control: self.control,
            entries: self
                .entries
                .iter()
                .map(|e| MsixEntryState {
                    address: (u64::from(e.addr_hi) << 32) | u64::from(e.addr_lo),
                    data: e.data,
                    vector_control: e.ctrl,
                })
                .collect(),
        }
    }

    /// Put back what [`Msix::state`] read (a restored VM); the vector counts must agree.
    pub fn restore(&mut self, s: &MsixState) -> Result<(), String> {
        if s.entries.len() != self.entries.len() {
            return Err(format!(
                "the snapshot has {} MSI-X vectors, this device {}",
                s.entries.len(),
                self.entries.len()
            ));
        }
        self.control = s.control;
        for (e, saved) in self.entries.iter_mut().zip(&s.entries) {
            e.addr_lo = saved.address as u32;
            e.addr_hi = (saved.address >> 32) as u32;
            e.data = saved.data;
            e.ctrl = saved.vector_control;
        }
        Ok(())
    }

    /// Where vector `v` currently sends its interrupt; `None` when MSI-X is off, the function
    /// or the vector is masked, or `v` does not exist.
    pub fn message(&self, v: u16) -> Option<MsiMessage> {
        if self.control & CTRL_ENABLE == 0 || self.control & CTRL_FUNCTION_MASK != 0 {
            return None;
        }
        let e = self.entries.get(usize::from(v))?;
        (e.ctrl & VECTOR_MASKED == 0).then_some(MsiMessage {
            address: (u64::from(e.addr_hi) << 32) | u64::from(e.addr_lo),
            data: e.data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_routes_only_when_enabled_and_unmasked() {
        let mut m = Msix::new(2);
        m.write_table(16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(24, &0x4041u32.to_le_bytes());
        assert_eq!(m.message(1), None, "MSI-X disabled");
        m.set_control(CTRL_ENABLE);
        assert_eq!(m.message(1), None, "vector masked");
        m.write_table(28, &0u32.to_le_bytes());
        assert_eq!(
            m.message(1),
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x4041
            })
        );
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert_eq!(m.message(1), None, "function masked");
        assert_eq!(m.message(7), None);
        assert_eq!(m.write_table(0x1000, &[1]), None, "outside the table");
        let mut d = [0u8; 4];
        m.read_table(24, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x4041);
    }

    #[test]
    fn state_captures_the_table_and_the_masks() {
        let mut m = Msix::new(2);
        m.write_table(16, &0xfee0_1000u32.to_le_bytes());
        m.write_table(20, &0x1u32.to_le_bytes());
        m.write_table(24, &0x4042u32.to_le_bytes());
        m.write_table(28, &0u32.to_le_bytes()); // unmask vector 1
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        let s = m.state();
        assert_eq!(s.version, MsixState::VERSION);
        assert_eq!(s.control, CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert_eq!(
            s.entries,
            vec![
                MsixEntryState {
                    address: 0,
                    data: 0,
                    vector_control: VECTOR_MASKED,
                },
                MsixEntryState {
                    address: 0x1_fee0_1000,
                    data: 0x4042,
                    vector_control: 0,
                },
            ]
        );
    }
}
