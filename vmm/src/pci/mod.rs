//! PCI: configuration space, the bus behind the 0xcf8/0xcfc configuration mechanism, and the
//! host bridge. Device BARs are assigned by the vmm in the 32-bit hole (see [`crate::layout`])
//! and described to the guest by the ACPI host bridge `_SB_.PCI0`.

pub mod bus;
pub mod config;

use config::ConfigSpace;

/// A PCI function on bus 0.
pub trait PciDevice: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// The 64-bit memory BARs: `(index, size)`.
    fn bars(&self) -> Vec<(usize, u64)> {
        Vec::new()
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    /// Called after the guest wrote config space at `offset` (MSI-X enable, BAR moves …).
    fn config_written(&mut self, _offset: usize) {}
    /// The machine resets (guest reboot): return to the power-on state.
    fn power_on_reset(&mut self) {}
}

/// The host bridge at 00:00.0: identity only.
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    pub fn new() -> HostBridge {
        HostBridge {
            config: ConfigSpace::new(&config::Header {
                vendor: 0x8086, // Intel, as the kernel's config-mechanism sanity check expects
                device: 0x0d57,
                class: 0x06_00_00, // bridge, host bridge
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}
