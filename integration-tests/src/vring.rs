//! A split virtqueue driven from outside a VM, for the VM-less benchmark frontends
//! (`sv-blkbench`, `sv-netbench`): ring layout in a memfd-backed guest memory, descriptor and
//! avail writes, the kick, waiting for the backend's call, and reading the used ring.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};

use anyhow::{bail, Context, Result};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const QUEUE_SIZE: u16 = 256;

/// Hand the whole guest memory to the backend (SET_MEM_TABLE with every region's memfd).
pub fn share_memory(f: &mut Frontend, mem: &GuestMemoryMmap) -> Result<()> {
    let regions: Vec<_> = mem
        .iter()
        .map(VhostUserMemoryRegionInfo::from_guest_region)
        .collect::<Result<_, _>>()?;
    f.set_mem_table(&regions).context("SET_MEM_TABLE")?;
    Ok(())
}

/// One split virtqueue in the guest memory from `base` (rings in the first MiB; the caller
/// puts its buffers above that).
pub struct Ring {
    pub base: u64,
    pub kick: EventFd,
    pub call: EventFd,
    /// The next avail index to publish, and the next used entry to read.
    pub avail_idx: u16,
    pub last_used: u16,
}

impl Ring {
    pub fn desc(&self) -> u64 {
        self.base
    }
    pub fn avail(&self) -> u64 {
        self.base + 16 * u64::from(QUEUE_SIZE)
    }
    pub fn used(&self) -> u64 {
        (self.avail() + 6 + 2 * u64::from(QUEUE_SIZE) + 4095) & !4095
    }

    /// Tell the backend about ring `index` at `base` and enable it.
    pub fn setup(f: &mut Frontend, mem: &GuestMemoryMmap, index: usize, base: u64) -> Result<Ring> {
        Self::resume(f, mem, index, base, 0)
    }

    /// [`Ring::setup`] for a ring already in use: the backend starts at `vring_base` (the used
    /// index), as after a backend restart.
    pub fn resume(
        f: &mut Frontend,
        mem: &GuestMemoryMmap,
        index: usize,
        base: u64,
        vring_base: u16,
    ) -> Result<Ring> {
        let ring = Ring {
            base,
            kick: EventFd::new(0)?,
            call: EventFd::new(0)?,
            avail_idx: vring_base,
            last_used: vring_base,
        };
        let host =
            |gpa: u64| -> Result<u64> { Ok(mem.get_host_address(GuestAddress(gpa))? as u64) };
        f.set_vring_num(index, QUEUE_SIZE)?;
        f.set_vring_addr(
            index,
            &VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: host(ring.desc())?,
                used_ring_addr: host(ring.used())?,
                avail_ring_addr: host(ring.avail())?,
                log_addr: None,
            },
        )?;
        f.set_vring_base(index, vring_base)?;
        f.set_vring_call(index, &ring.call)?;
        f.set_vring_kick(index, &ring.kick)
            .context("SET_VRING_KICK")?;
        f.set_vring_enable(index, true)
            .context("SET_VRING_ENABLE")?;
        Ok(ring)
    }

    /// Write descriptor `index`.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        (addr, len, flags, next): (u64, u32, u16, u16),
    ) -> Result<()> {
        let at = self.desc() + u64::from(index) * 16;
        mem.write_obj(addr.to_le(), GuestAddress(at))?;
        mem.write_obj(len.to_le(), GuestAddress(at + 8))?;
        mem.write_obj(flags.to_le(), GuestAddress(at + 12))?;
        mem.write_obj(next.to_le(), GuestAddress(at + 14))?;
        Ok(())
    }

    /// Put the chain starting at descriptor `head` in the next avail slot (not yet visible).
    pub fn push(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<()> {
        let slot = self.avail() + 4 + u64::from(self.avail_idx % QUEUE_SIZE) * 2;
        mem.write_obj(head.to_le(), GuestAddress(slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Make the pushed chains visible to the backend and kick it.
    pub fn publish(&self, mem: &GuestMemoryMmap) -> Result<()> {
        fence(Ordering::Release);
        mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.avail() + 2),
            Ordering::Release,
        )?;
        self.kick.write(1)?;
        Ok(())
    }

    /// The used entries `(id, len)` the backend added since the last call.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Result<Vec<(u16, u32)>> {
        let used_idx = u16::from_le(mem.load(GuestAddress(self.used() + 2), Ordering::Acquire)?);
        let mut out = Vec::new();
        while self.last_used != used_idx {
            let elem = self.used() + 4 + u64::from(self.last_used % QUEUE_SIZE) * 8;
            let id = u32::from_le(mem.read_obj(GuestAddress(elem))?) as u16;
            let len = u32::from_le(mem.read_obj(GuestAddress(elem + 4))?);
            out.push((id, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        Ok(out)
    }

    /// The used entries the backend adds, until there are `count` or `timeout` has passed.
    pub fn wait_used(
        &mut self,
        mem: &GuestMemoryMmap,
        count: usize,
        timeout: std::time::Duration,
    ) -> Result<Vec<(u16, u32)>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut used = self.take_used(mem)?;
        while used.len() < count && std::time::Instant::now() < deadline {
            self.wait_call(1000)?;
            used.extend(self.take_used(mem)?);
        }
        Ok(used)
    }

    /// Wait (at most `timeout_ms`) for the backend's interrupt; false on timeout. The call
    /// eventfd may have been made non-blocking by the backend (QEMU does that to fds it
    /// receives: the file description is shared), so poll it first.
    pub fn wait_call(&self, timeout_ms: i32) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: poll reads and writes one pollfd we own, for a bounded time.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if n == 0 {
                return Ok(false);
            }
            if n > 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err.into());
            }
        }
        match self.call.read() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// As [`Ring::wait_call`], but a backend silent for 10 s is an error.
    pub fn wait_call_or_fail(&self) -> Result<()> {
        if !self.wait_call(10_000)? {
            bail!("no completion from the backend within 10 s");
        }
        Ok(())
    }
}
