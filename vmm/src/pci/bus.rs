//! PCI bus 0: the configuration mechanism #1 ports (0xcf8 address, 0xcfc data) and dispatch
//! of MMIO accesses to device BARs.

use std::sync::{Arc, Mutex, RwLock};

use super::PciDevice;

pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
pub const CONFIG_DATA_PORT: u16 = 0xcfc;
/// Slots on bus 0.
pub const MAX_SLOTS: usize = 32;
const ENABLE: u32 = 1 << 31;

pub type SharedDevice = Arc<Mutex<dyn PciDevice>>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("PCI bus 0 is full ({MAX_SLOTS} slots)")]
    Full,
    #[error("PCI slot {0} is taken or does not exist")]
    SlotTaken(usize),
}

/// Bus 0's slots: a device in slot `n` is device `n`, function 0; slot 0 is the host bridge.
/// Slots change at run time (hotplug): every access clones the device's `Arc` out of the
/// table and locks the device after letting go of the table.
pub struct PciBus {
    slots: RwLock<Vec<Option<SharedDevice>>>,
    config_address: Mutex<u32>,
    /// Where each slot's BARs decode now: (BAR index, base, size), kept up to date on every
    /// config-space write, so that an MMIO exit finds its device without locking any other
    /// (a vCPU waiting on one device's backend must not stall accesses to the rest).
    bar_map: RwLock<Vec<Vec<(usize, u64, u64)>>>,
}

/// The BAR ranges `d` decodes (none while memory decoding is off).
fn decoded_bars(d: &dyn PciDevice) -> Vec<(usize, u64, u64)> {
    if !d.config().memory_enabled() {
        return Vec::new();
    }
    d.bars()
        .into_iter()
        .map(|(index, size)| (index, d.config().bar_addr(index), size))
        .collect()
}

fn lock(d: &SharedDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl PciBus {
    pub fn new() -> PciBus {
        let mut slots: Vec<Option<SharedDevice>> = vec![None; MAX_SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(super::HostBridge::new())));
        PciBus {
            slots: RwLock::new(slots),
            config_address: Mutex::new(0),
            bar_map: RwLock::new(vec![Vec::new(); MAX_SLOTS]),
        }
    }

    /// Plug a device into the lowest free slot; returns the slot.
    pub fn add(&self, device: SharedDevice) -> Result<usize, BusError> {
        let slot = self.free_slot_where(|_| true).ok_or(BusError::Full)?;
        self.add_at(slot, device)?;
        Ok(slot)
    }

    /// The lowest slot without a device that `usable` accepts.
    pub fn free_slot_where(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        (0..slots.len()).find(|&s| slots[s].is_none() && usable(s))
    }

    /// Plug a device into `slot` (free, 1..=31).
    pub fn add_at(&self, slot: usize, device: SharedDevice) -> Result<(), BusError> {
        let bars = decoded_bars(&*lock(&device));
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        match slots.get_mut(slot) {
            Some(free @ None) if slot > 0 => *free = Some(device),
            _ => return Err(BusError::SlotTaken(slot)),
        }
        self.bar_map.write().unwrap_or_else(|e| e.into_inner())[slot] = bars;
        Ok(())
    }

    /// Take `slot`'s device off the bus (the guest ejected it); the host bridge stays.
    pub fn remove(&self, slot: usize) -> Option<SharedDevice> {
        if slot == 0 {
            return None;
        }
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        let device = slots.get_mut(slot)?.take();
        if let Some(bars) = self
            .bar_map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(slot)
        {
            bars.clear();
        }
        device
    }

    /// The device in `slot`, if any.
    pub fn device(&self, slot: usize) -> Option<SharedDevice> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots.get(slot).cloned().flatten()
    }

    /// Record where `device` (in `slot`) decodes now, unless it left the bus meanwhile.
    fn set_bars(&self, slot: usize, device: &SharedDevice, bars: Vec<(usize, u64, u64)>) {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        if !matches!(slots.get(slot), Some(Some(d)) if Arc::ptr_eq(d, device)) {
            return;
        }
        if let Some(entry) = self
            .bar_map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(slot)
        {
            *entry = bars;
        }
    }

    /// The config address latch (0xcf8): a guest may be stopped between setting it and
    /// using it, so a snapshot keeps it.
    pub fn config_address(&self) -> u32 {
        *self
            .config_address
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_config_address(&self, value: u32) {
        *self
            .config_address
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// Reset every device to its power-on state (the guest rebooted).
    pub fn power_on_reset(&self) {
        *self
            .config_address
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = 0;
        let devices: Vec<(usize, SharedDevice)> = {
            let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .enumerate()
                .filter_map(|(i, d)| Some((i, d.clone()?)))
                .collect()
        };
        for (slot, device) in devices {
            let bars = {
                let mut d = lock(&device);
                d.power_on_reset();
                decoded_bars(&*d)
            };
            self.set_bars(slot, &device, bars);
        }
    }

    /// The device addressed by the config address register, its slot and the register offset.
    fn target(&self) -> Option<(SharedDevice, usize, usize)> {
        let a = *self
            .config_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (bus, slot, func) = ((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 0x7);
        if a & ENABLE == 0 || bus != 0 || func != 0 {
            return None;
        }
        self.device(slot as usize)
            .map(|d| (d, slot as usize, (a & 0xfc) as usize))
    }

    /// Port reads in 0xcf8..=0xcff; false if the port is not ours.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        match port {
            CONFIG_ADDRESS_PORT..=0xcfb => {
                let a = *self
                    .config_address
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                read_bytes(a, usize::from(port - CONFIG_ADDRESS_PORT), data);
            }
            CONFIG_DATA_PORT..=0xcff => match self.target() {
                Some((dev, _, reg)) => {
                    let v = lock(&dev).config().read(reg);
                    read_bytes(v, usize::from(port - CONFIG_DATA_PORT), data);
                }
                None => data.fill(0xff),
            },
            _ => return false,
        }
        true
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        match port {
            CONFIG_ADDRESS_PORT..=0xcfb => {
                let mut a = self
                    .config_address
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let shift = usize::from(port - CONFIG_ADDRESS_PORT) * 8;
                for (i, b) in data.iter().enumerate() {
                    let s = shift + i * 8;
                    if s < 32 {
                        *a = (*a & !(0xff << s)) | (u32::from(*b) << s);
                    }
                }
            }
            CONFIG_DATA_PORT..=0xcff => {
                if let Some((dev, slot, reg)) = self.target() {
                    let offset = reg + usize::from(port - CONFIG_DATA_PORT);
                    let mut d = lock(&dev);
                    d.config_mut().write(offset, data);
                    d.config_written(offset);
                    self.set_bars(slot, &dev, decoded_bars(&*d));
                }
            }
            _ => return false,
        }
        true
    }

    fn find_bar(&self, addr: u64) -> Option<(SharedDevice, usize, u64)> {
        let (slot, index, offset) = {
            let map = self.bar_map.read().unwrap_or_else(|e| e.into_inner());
            map.iter().enumerate().find_map(|(slot, bars)| {
                bars.iter().find_map(|&(index, base, size)| {
                    (addr >= base && addr - base < size).then(|| (slot, index, addr - base))
                })
            })?
        };
        self.device(slot).map(|d| (d, index, offset))
    }

    /// MMIO reads; false if no BAR decodes `addr`.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find_bar(addr) {
            Some((dev, bar, offset)) => {
                lock(&dev).bar_read(bar, offset, data);
                true
            }
            None => false,
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find_bar(addr) {
            Some((dev, bar, offset)) => {
                lock(&dev).bar_write(bar, offset, data);
                true
            }
            None => false,
        }
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

fn read_bytes(value: u32, byte: usize, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(byte + i).copied().unwrap_or(0xff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(bus: &PciBus, slot: u32, reg: u32) {
        bus.pio_write(
            CONFIG_ADDRESS_PORT,
            &(ENABLE | slot << 11 | reg).to_le_bytes(),
        );
    }

    #[test]
    fn type1_probe_and_host_bridge() {
        let bus = PciBus::new();
        // the kernel's pci_check_type1(): the address register reads back
        bus.pio_write(0xcfb, &[1]);
        bus.pio_write(CONFIG_ADDRESS_PORT, &ENABLE.to_le_bytes());
        let mut d = [0u8; 4];
        bus.pio_read(CONFIG_ADDRESS_PORT, &mut d);
        assert_eq!(u32::from_le_bytes(d), ENABLE);
        select(&bus, 0, 0);
        bus.pio_read(CONFIG_DATA_PORT, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        // class word at 0x0a: host bridge
        select(&bus, 0, 8);
        let mut w = [0u8; 2];
        bus.pio_read(CONFIG_DATA_PORT + 2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0600);
        // an empty slot reads as all-ones
        select(&bus, 7, 0);
        bus.pio_read(CONFIG_DATA_PORT, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.pio_read(0x3f8, &mut d));
    }

    /// A device with one 4 KiB BAR at `addr` whose reads return its `tag`.
    struct Tagged {
        config: crate::pci::config::ConfigSpace,
        tag: u8,
    }

    impl PciDevice for Tagged {
        fn config(&self) -> &crate::pci::config::ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut crate::pci::config::ConfigSpace {
            &mut self.config
        }
        fn bars(&self) -> Vec<(usize, u64)> {
            vec![(0, 0x1000)]
        }
        fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
            data.fill(self.tag);
        }
    }

    fn tagged(addr: u64, tag: u8) -> Arc<Mutex<Tagged>> {
        let mut config = crate::pci::config::ConfigSpace::new(&crate::pci::config::Header {
            vendor: 0x1af4,
            device: 0x1000 + u16::from(tag),
            class: 0xff_00_00,
            revision: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        });
        config.add_bar64(0, addr, 0x1000).unwrap();
        Arc::new(Mutex::new(Tagged { config, tag }))
    }

    #[test]
    fn slots_are_taken_and_given_back_at_run_time() {
        let bus = PciBus::new();
        assert_eq!(bus.add(tagged(0xe000_0000, 1)).unwrap(), 1);
        assert_eq!(bus.free_slot_where(|_| true), Some(2));
        assert_eq!(bus.free_slot_where(|s| s != 2), Some(3));
        assert!(bus.add_at(1, tagged(0xe000_1000, 2)).is_err(), "taken");
        assert!(
            bus.add_at(0, tagged(0xe000_1000, 2)).is_err(),
            "the host bridge's"
        );
        bus.add_at(5, tagged(0xe000_5000, 5)).unwrap();
        select(&bus, 5, 4);
        bus.pio_write(CONFIG_DATA_PORT, &[0x06, 0]);
        let mut d = [0u8; 4];
        assert!(bus.mmio_read(0xe000_5000, &mut d));
        assert!(bus.remove(5).is_some());
        assert!(!bus.mmio_read(0xe000_5000, &mut d), "its BAR left with it");
        assert!(bus.remove(0).is_none(), "the host bridge stays");
        assert_eq!(bus.free_slot_where(|s| s > 4), Some(5));
    }

    #[test]
    fn an_access_to_one_device_does_not_wait_for_another() {
        let bus = PciBus::new();
        let (a, b) = (tagged(0xe000_0000, 1), tagged(0xe000_1000, 2));
        bus.add(a.clone()).unwrap();
        bus.add(b.clone()).unwrap();
        // the guest enables memory decoding on both (command register, offset 4)
        for slot in [1, 2] {
            select(&bus, slot, 4);
            bus.pio_write(CONFIG_DATA_PORT, &[0x06, 0]);
        }
        let mut d = [0u8; 4];
        assert!(bus.mmio_read(0xe000_1004, &mut d));
        assert_eq!(d, [2; 4]);
        // device 1 is held (a vCPU waiting on its backend): device 2 still answers at once
        let held = a.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let bus = Arc::new(bus);
        let reader = bus.clone();
        std::thread::spawn(move || {
            let mut d = [0u8; 4];
            let found = reader.mmio_read(0xe000_1008, &mut d);
            tx.send((found, d)).unwrap();
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        assert_eq!(
            got,
            Ok((true, [2; 4])),
            "blocked behind the other device's lock"
        );
        // decoding off: the BAR no longer answers
        select(&bus, 2, 4);
        bus.pio_write(CONFIG_DATA_PORT, &[0, 0]);
        assert!(!bus.mmio_read(0xe000_1004, &mut d));
    }
}
