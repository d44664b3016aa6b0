//! GDT entries and the KVM segment descriptors built from them.

use kvm_bindings::kvm_segment;

/// A GDT entry from flags (access byte + flags nibble), base and limit.
pub fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The KVM view of GDT entry `e` at `index`.
pub fn segment(e: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((e >> n) & 1) as u8;
    let g = bit(55);
    let mut limit = ((e & 0xffff) | (((e >> 48) & 0xf) << 16)) as u32;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    let present = bit(47);
    kvm_segment {
        base: ((e >> 16) & 0xff_ffff) | (((e >> 56) & 0xff) << 24),
        limit,
        selector: u16::from(index) * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment() {
        let s = segment(entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (s.selector, s.l, s.db, s.present, s.s, s.type_),
            (8, 1, 0, 1, 1, 0xb)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
    }
}
