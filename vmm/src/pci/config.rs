//! A type-0 PCI configuration space: header registers, 64-bit memory BARs with the sizing
//! protocol (write all-ones, read back the size mask), and a capability list.

/// Config space size (conventional PCI; ECAM's extended space reads as zero).
pub const CONFIG_SIZE: usize = 256;
const NUM_REGS: usize = CONFIG_SIZE / 4;
const COMMAND_STATUS: usize = 1;
const BAR0: usize = 4;
const CAPABILITY_POINTER: usize = 0xd;
const FIRST_CAPABILITY: usize = 0x40;
const STATUS_CAPABILITIES: u32 = 1 << (16 + 4);
/// Memory BAR flags: 64-bit, non-prefetchable.
const BAR_MEM64: u32 = 0b100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0} is not free for a 64-bit BAR")]
    BarInUse(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 4 KiB")]
    BarSize(u64),
    #[error("no room left in config space for a {0}-byte capability")]
    CapabilityFull(usize),
}

/// One function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: [u32; NUM_REGS],
    /// Bits of each register the guest may change.
    writable: [u32; NUM_REGS],
    bars: [Option<u64>; 6],
    next_cap: usize,
    last_cap: Option<usize>,
}

/// Identity of a PCI function.
pub struct Header {
    pub vendor: u16,
    pub device: u16,
    pub class: u32, // class << 16 | subclass << 8 | prog-if
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

impl ConfigSpace {
    pub fn new(h: &Header) -> ConfigSpace {
        let mut regs = [0u32; NUM_REGS];
        regs[0] = u32::from(h.device) << 16 | u32::from(h.vendor);
        regs[2] = h.class << 8 | u32::from(h.revision);
        regs[0xb] = u32::from(h.subsystem) << 16 | u32::from(h.subsystem_vendor);
        let mut writable = [0u32; NUM_REGS];
        // command: I/O, memory, bus master, INTx disable
        writable[COMMAND_STATUS] = 0x0000_0407;
        // interrupt line
        writable[0xf] = 0xff;
        ConfigSpace {
            regs,
            writable,
            bars: [None; 6],
            next_cap: FIRST_CAPABILITY,
            last_cap: None,
        }
    }

    /// Add a 64-bit memory BAR of `size` bytes at `addr` (using BAR slots `index`, `index + 1`).
    pub fn add_bar64(&mut self, index: usize, addr: u64, size: u64) -> Result<(), ConfigError> {
        if index + 1 >= 6 || self.bars[index].is_some() || self.bars[index + 1].is_some() {
            return Err(ConfigError::BarInUse(index));
        }
        if !size.is_power_of_two() || size < 0x1000 {
            return Err(ConfigError::BarSize(size));
        }
        self.bars[index] = Some(size);
        let mask = !(size - 1);
        self.regs[BAR0 + index] = (addr as u32 & mask as u32) | BAR_MEM64;
        self.regs[BAR0 + index + 1] = (addr >> 32) as u32;
        self.writable[BAR0 + index] = mask as u32 & !0xf;
        self.writable[BAR0 + index + 1] = (mask >> 32) as u32;
        Ok(())
    }

    /// Where 64-bit BAR `index` is now.
    pub fn bar_addr(&self, index: usize) -> u64 {
        (u64::from(self.regs[BAR0 + index + 1]) << 32) | u64::from(self.regs[BAR0 + index] & !0xf)
    }

    /// Append a capability (`bytes[0]` is its ID; `bytes[1]`, the next pointer, is filled in).
    /// Returns its offset. `writable` marks the bytes the guest may change.
    pub fn add_capability(&mut self, bytes: &[u8], writable: &[u8]) -> Result<usize, ConfigError> {
        let len = bytes.len().next_multiple_of(4);
        let off = self.next_cap;
        if off + len > CONFIG_SIZE {
            return Err(ConfigError::CapabilityFull(bytes.len()));
        }
        for (i, b) in bytes.iter().enumerate() {
            self.set_byte(off + i, *b);
        }
        for (i, w) in writable.iter().enumerate() {
            let reg = (off + i) / 4;
            let shift = ((off + i) % 4) * 8;
            self.writable[reg] |= u32::from(*w) << shift;
        }
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, off as u8),
            None => {
                self.regs[CAPABILITY_POINTER] = off as u32;
                self.regs[COMMAND_STATUS] |= STATUS_CAPABILITIES;
            }
        }
        self.last_cap = Some(off);
        self.next_cap = off + len;
        Ok(off)
    }

    fn set_byte(&mut self, off: usize, value: u8) {
        let shift = (off % 4) * 8;
        self.regs[off / 4] = (self.regs[off / 4] & !(0xff << shift)) | (u32::from(value) << shift);
    }

    /// The dword at byte offset `offset` (rounded down to a dword).
    pub fn read(&self, offset: usize) -> u32 {
        self.regs.get(offset / 4).copied().unwrap_or(0)
    }

    /// A guest write of `data` (1, 2 or 4 bytes) at byte offset `offset`.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let reg = offset / 4;
        let shift = (offset % 4) * 8;
        if reg >= NUM_REGS || data.is_empty() || data.len() > 4 || offset % 4 + data.len() > 4 {
            return;
        }
        let mut value = [0u8; 4];
        value[..data.len()].copy_from_slice(data);
        let value = u32::from_le_bytes(value) << shift;
        let bytes_mask = if data.len() == 4 {
            u32::MAX
        } else {
            ((1u32 << (data.len() * 8)) - 1) << shift
        };
        let mask = self.writable[reg] & bytes_mask;
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
    }

    /// Memory decoding enabled in the command register.
    pub fn memory_enabled(&self) -> bool {
        self.regs[COMMAND_STATUS] & 0x2 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        ConfigSpace::new(&Header {
            vendor: 0x1af4,
            device: 0x1042,
            class: 0x018000,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        })
    }

    #[test]
    fn header_identity() {
        let c = space();
        assert_eq!(c.read(0), 0x1042_1af4);
        assert_eq!(c.read(8), 0x0180_0001);
        c.read(0x1000); // out of range reads as zero, no panic
    }

    #[test]
    fn bar_sizing_protocol() {
        let mut c = space();
        c.add_bar64(0, 0xe000_0000, 0x1_0000).unwrap();
        assert_eq!(c.read(0x10), 0xe000_0004);
        c.write(0x10, &[0xff; 4]);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(
            c.read(0x10),
            0xffff_0004,
            "size mask of a 64 KiB 64-bit BAR"
        );
        assert_eq!(c.read(0x14), 0xffff_ffff);
        c.write(0x10, &0xe001_0000u32.to_le_bytes());
        c.write(0x14, &[0; 4]);
        assert_eq!(c.bar_addr(0), 0xe001_0000);
        assert_eq!(c.add_bar64(0, 0, 0x1000), Err(ConfigError::BarInUse(0)));
        assert_eq!(c.add_bar64(2, 0, 0x1234), Err(ConfigError::BarSize(0x1234)));
    }

    #[test]
    fn capabilities_are_chained() {
        let mut c = space();
        let a = c.add_capability(&[0x09, 0, 16, 1], &[]).unwrap();
        let b = c
            .add_capability(&[0x11, 0, 0, 0], &[0, 0, 0xff, 0xff])
            .unwrap();
        assert_eq!((a, b), (0x40, 0x44));
        assert_eq!(c.read(0x34), 0x40);
        assert_eq!(c.read(0x40) >> 8 & 0xff, 0x44, "next pointer");
        assert!(c.read(4) & STATUS_CAPABILITIES != 0);
        c.write(0x46, &[0x34, 0x12]);
        assert_eq!(c.read(0x44) >> 16, 0x1234);
        c.write(0x40, &[0xaa]); // read-only
        assert_eq!(c.read(0x40) & 0xff, 0x09);
    }

    #[test]
    fn read_only_identity_and_partial_writes() {
        let mut c = space();
        c.write(0, &[0; 4]);
        assert_eq!(c.read(0), 0x1042_1af4);
        c.write(4, &[0x06]);
        assert!(c.memory_enabled());
        c.write(3, &[1, 2]); // crosses a dword: ignored
    }
}
