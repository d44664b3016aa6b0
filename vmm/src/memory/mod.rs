//! Guest RAM: one file (a memfd, or an unnamed file on a private huge-page tmpfs), mapped
//! `MAP_SHARED` so vhost-user backends can map the same pages; which file, and so which page
//! size, is [`backing`]'s choice. Split around the 32-bit hole (see [`crate::layout`]).
//! `shared=off` is private anonymous memory instead (no backends; KSM can merge it).

pub mod backing;

use std::fs::File;

use api::types::RamPages;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::config::{ByteSize, MemoryConfig};
use crate::layout::ram_ranges;
use backing::NR_HUGEPAGES;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the guest memory memfd")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest memory file to {0} bytes")]
    Size(u64, #[source] std::io::Error),
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("--memory {want} is more than this host's {host_mib} MiB of RAM")]
    TooLarge { want: ByteSize, host_mib: u64 },
    #[error(
        "hugepages=on needs {need} free 2 MiB huge pages but {free} are free: raise {NR_HUGEPAGES}"
    )]
    NoHugepages { need: u64, free: u64 },
    #[error("madvise({0}) on guest memory failed")]
    Madvise(&'static str, #[source] std::io::Error),
}

/// The guest's RAM and the file behind it.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    pages: RamPages,
}

impl GuestRam {
    pub fn new(cfg: &MemoryConfig) -> Result<GuestRam, MemoryError> {
        let size = cfg.size.0;
        check_host_memory(size)?;
        let backing = backing::create(cfg)?;
        if let Some(file) = &backing.file {
            file.set_len(size).map_err(|e| MemoryError::Size(size, e))?;
        }
        GuestRam::map(cfg, backing)
    }

    /// The RAM of a VM whose file another process made (a local migration's source hands
    /// its memfd over): mapped as [`Self::new`] maps its own, contents kept.
    pub fn from_file(
        cfg: &MemoryConfig,
        file: File,
        pages: RamPages,
    ) -> Result<GuestRam, MemoryError> {
        let size = cfg.size.0;
        let len = file.metadata().map_err(MemoryError::Memfd)?.len();
        if len < size {
            return Err(MemoryError::Size(
                size,
                std::io::Error::other(format!("the file handed over holds only {len} bytes")),
            ));
        }
        let backing = backing::Backing {
            file: Some(file),
            pages,
            advise_huge: pages == RamPages::Thp2M,
        };
        GuestRam::map(cfg, backing)
    }

    fn map(cfg: &MemoryConfig, backing: backing::Backing) -> Result<GuestRam, MemoryError> {
        let size = cfg.size.0;
        let mut ranges = Vec::new();
        let mut file_offset = 0;
        for (start, len) in ram_ranges(size) {
            let f = match &backing.file {
                Some(file) => Some(FileOffset::new(
                    file.try_clone().map_err(MemoryError::Memfd)?,
                    file_offset,
                )),
                None => None,
            };
            ranges.push((GuestAddress(start), len as usize, f));
            file_offset += len;
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
        let ram = GuestRam {
            mem,
            size,
            pages: backing.pages,
        };
        if backing.advise_huge {
            ram.madvise(libc::MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
        }
        if cfg.mergeable {
            ram.madvise(libc::MADV_MERGEABLE, "MADV_MERGEABLE")?;
        }
        tracing::info!("guest RAM: {} in {} pages", ByteSize(size), backing.pages);
        Ok(ram)
    }

    /// The page size the RAM's backing gives (`vm.info`'s `ram_pages`).
    pub fn pages(&self) -> RamPages {
        self.pages
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file behind every region (guest RAM is its bytes 0..size, region after region);
    /// `None` for private RAM (`shared=off`).
    pub fn memfd(&self) -> Option<&File> {
        self.mem
            .iter()
            .next()
            .and_then(|r| r.file_offset())
            .map(|f| f.file())
    }

    /// End of RAM below the 32-bit hole.
    pub fn low_ram_end(&self) -> u64 {
        self.mem
            .iter()
            .map(|r| r.start_addr().0 + r.len())
            .filter(|end| *end <= crate::layout::MEM_32BIT_GAP_START)
            .max()
            .unwrap_or(0)
    }

    /// `(slot, guest address, size, host address)` for each region, for KVM registration.
    pub fn regions(&self) -> Vec<(u32, u64, u64, u64)> {
        self.mem
            .iter()
            .enumerate()
            .map(|(slot, r)| {
                let host = self
                    .mem
                    .get_host_address(r.start_addr())
                    .map(|p| p as u64)
                    .unwrap_or(0);
                (slot as u32, r.start_addr().0, r.len(), host)
            })
            .collect()
    }

    /// Register every region as a KVM memory slot.
    ///
    /// # Safety
    /// The guest can write these mappings through `vm`: `self` must outlive every use of
    /// `vm` (keep both in the same owner, drop the VM first).
    pub unsafe fn register_with(&self, vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
        for (slot, guest, size, host) in self.regions() {
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: guest,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: `region` describes a live MAP_SHARED mapping of `size` bytes owned by
            // `self`, which the caller keeps alive for as long as `vm` runs.
            unsafe { vm.set_user_memory_region(region) }?;
        }
        Ok(())
    }

    fn madvise(&self, advice: libc::c_int, name: &'static str) -> Result<(), MemoryError> {
        for (_, _, len, host) in self.regions() {
            // SAFETY: [host, host+len) is a mapping owned by `self.mem`; MADV_HUGEPAGE and
            // MADV_MERGEABLE only change how the kernel backs its pages, never their contents.
            let ret = unsafe { libc::madvise(host as *mut libc::c_void, len as usize, advice) };
            if ret != 0 {
                return Err(MemoryError::Madvise(name, std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

/// `mib` MiB of guest RAM with the default backing (unit tests).
#[cfg(test)]
pub(crate) fn test_ram(mib: u64) -> GuestRam {
    GuestRam::new(&MemoryConfig {
        size: ByteSize(mib << 20),
        ..MemoryConfig::default()
    })
    .unwrap()
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn check_host_memory(size: u64) -> Result<(), MemoryError> {
    if let Some(total_kib) = meminfo_kib("MemTotal:") {
        let host_mib = total_kib >> 10;
        if size >> 20 > host_mib {
            return Err(MemoryError::TooLarge {
                want: ByteSize(size),
                host_mib,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
