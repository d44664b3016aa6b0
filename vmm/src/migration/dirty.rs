//! The pages the guest's vCPUs write during a pre-copy: KVM's dirty log
//! (KVM_MEM_LOG_DIRTY_PAGES on every RAM slot, read and cleared by KVM_GET_DIRTY_LOG each
//! round). The vmm itself writes no guest RAM while the VM runs (the data path is in the
//! backends), so this is all of the vmm's share.

use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;

pub const PAGE: u64 = 4096;

/// One KVM slot of guest RAM: `(slot, guest address, size, host address)` as
/// [`crate::memory::GuestRam::regions`] lists them, with its offset in the RAM's file.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub slot: u32,
    pub gpa: u64,
    pub size: u64,
    pub host: u64,
    pub file_offset: u64,
}

/// The slots of `regions` (laid out in the file one after the other).
pub fn slots(regions: &[(u32, u64, u64, u64)]) -> Vec<Slot> {
    let mut file_offset = 0;
    regions
        .iter()
        .map(|&(slot, gpa, size, host)| {
            let s = Slot {
                slot,
                gpa,
                size,
                host,
                file_offset,
            };
            file_offset += size;
            s
        })
        .collect()
}

/// KVM's dirty log over every slot, on from [`DirtyLog::start`] until dropped.
pub struct DirtyLog {
    vm: Arc<VmFd>,
    slots: Vec<Slot>,
}

impl DirtyLog {
    /// Turn logging on (every page counts as clean from here).
    pub fn start(vm: Arc<VmFd>, slots: Vec<Slot>) -> Result<DirtyLog, kvm_ioctls::Error> {
        let log = DirtyLog { vm, slots };
        log.set(KVM_MEM_LOG_DIRTY_PAGES)?;
        Ok(log)
    }

    fn set(&self, flags: u32) -> Result<(), kvm_ioctls::Error> {
        for s in &self.slots {
            let region = kvm_userspace_memory_region {
                slot: s.slot,
                flags,
                guest_phys_addr: s.gpa,
                memory_size: s.size,
                userspace_addr: s.host,
            };
            // SAFETY: the same slot, guest range and mapping the VM registered at its start
            // (GuestRam::register_with, kept alive as long as the VM); only the flag changes.
            unsafe { self.vm.set_user_memory_region(region) }?;
        }
        Ok(())
    }

    /// The file offsets of the pages written since the last call (or the start), in order.
    pub fn take(&self) -> Result<Vec<u64>, kvm_ioctls::Error> {
        let mut pages = Vec::new();
        for s in &self.slots {
            let bitmap = self.vm.get_dirty_log(s.slot, s.size as usize)?;
            for (w, word) in bitmap.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    let page = w as u64 * 64 + b;
                    if page * PAGE < s.size {
                        pages.push(s.file_offset + page * PAGE);
                    }
                }
            }
        }
        Ok(pages)
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        if let Err(e) = self.set(0) {
            tracing::error!("cannot turn KVM's dirty log off: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_each_other_in_the_file() {
        let s = slots(&[(0, 0, 3 << 30, 0x1000), (1, 4 << 30, 1 << 30, 0x2000)]);
        assert_eq!(s[0].file_offset, 0);
        assert_eq!(s[1].file_offset, 3 << 30);
        assert_eq!(s[1].gpa, 4 << 30);
    }
}
