//! The guest memory a backend works on: what the frontend's memory table maps, handed to the
//! device by vhost-user-backend's `update_memory` and read by the queue workers.

use std::io;

use std::sync::RwLock;

use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// The guest memory of the current frontend connection: empty until the frontend sends its
/// memory table, replaced whenever it sends another.
pub struct GuestMemoryHandle {
    mem: RwLock<GuestMemoryAtomic<GuestMemoryMmap>>,
}

impl Default for GuestMemoryHandle {
    fn default() -> Self {
        GuestMemoryHandle {
            mem: RwLock::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())),
        }
    }
}

impl GuestMemoryHandle {
    /// No memory yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current memory (a handle: `.memory()` on it gives a snapshot that stays mapped for
    /// as long as it is held).
    pub fn get(&self) -> io::Result<GuestMemoryAtomic<GuestMemoryMmap>> {
        Ok(self.mem.read().map_err(crate::lock_err)?.clone())
    }

    /// Work on `mem` from now on (the body of `VhostUserBackend::update_memory`).
    pub fn set(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.mem.write().map_err(crate::lock_err)? = mem;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryBackend};

    #[test]
    fn memory_is_empty_until_set() {
        let handle = GuestMemoryHandle::new();
        assert_eq!(handle.get().unwrap().memory().num_regions(), 0);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        handle.set(GuestMemoryAtomic::new(mem)).unwrap();
        assert_eq!(handle.get().unwrap().memory().num_regions(), 1);
    }
}
