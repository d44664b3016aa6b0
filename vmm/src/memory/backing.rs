//! Where guest RAM's pages come from. Guest RAM is one file that every vhost-user backend
//! maps, and the file decides the page size the guest's memory gets (docs/architecture.md,
//! "Guest RAM"). By default (`hugepages` not given) the first of these the host allows:
//!
//! 1. a memfd, when the kernel's `shmem_enabled` is `always`, `within_size` or `force` (its
//!    shmem gives 2 MiB pages by itself);
//! 2. an unlinked file on a private tmpfs mounted with `huge=within_size` — a detached mount
//!    (fsopen/fsmount), visible in no mount namespace, that lives as long as the file; the
//!    per-mount option works while the system-wide `shmem_enabled` is `never` (Debian's
//!    default). Mounting needs CAP_SYS_ADMIN and happens before the seccomp filter
//!    ([`prepare`]);
//! 3. a memfd mapped with `MADV_HUGEPAGE`, when `shmem_enabled` is `advise`;
//! 4. a hugetlbfs memfd, when the operator has reserved enough free 2 MiB pages;
//! 5. a memfd in 4 KiB pages, with a warning naming the knobs.
//!
//! `hugepages=on` is hugetlbfs or an error, `hugepages=off` a plain memfd; `shared=off` is
//! private anonymous memory with `MADV_HUGEPAGE` (no vhost-user devices; what KSM can merge).

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use api::types::RamPages;
use rustix::fd::OwnedFd;

use super::MemoryError;
use crate::config::MemoryConfig;

const HUGE_PAGE_SIZE: u64 = 2 << 20;
pub(super) const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const FREE_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
const SHMEM_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The file behind guest RAM (`None`: private anonymous memory) and the pages it gives.
pub struct Backing {
    pub file: Option<File>,
    pub pages: RamPages,
    /// Map it with `MADV_HUGEPAGE`.
    pub advise_huge: bool,
}

impl Backing {
    fn shared(file: File, pages: RamPages, advise_huge: bool) -> Backing {
        Backing {
            file: Some(file),
            pages,
            advise_huge,
        }
    }

    /// A hugetlbfs memfd (the free pages already checked).
    fn hugetlb() -> Result<Backing, MemoryError> {
        Ok(Backing::shared(memfd(true)?, RamPages::Hugetlb2M, false))
    }
}

/// 2 MiB pages if `huge`, else 4 KiB.
fn thp_if(huge: bool) -> RamPages {
    if huge {
        RamPages::Thp2M
    } else {
        RamPages::Small4K
    }
}

/// A detached tmpfs mount with `huge=within_size` (see [`HugeTmpfs::file`]).
struct HugeTmpfs(OwnedFd);

/// The private tmpfs, or why there is none. Mounted at most once per process.
static HUGE_TMPFS: OnceLock<Result<HugeTmpfs, String>> = OnceLock::new();

/// Mount the private huge-page tmpfs now, while mounting is still allowed: the vmm's
/// seccomp filter forbids `fsopen`/`fsmount`, so this runs before it is installed. A mount
/// that holds no file costs nothing; one that fails leaves the fallbacks.
pub fn prepare() {
    HUGE_TMPFS.get_or_init(mount_huge_tmpfs);
}

fn mount_huge_tmpfs() -> Result<HugeTmpfs, String> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_string, fsmount, fsopen, FsMountFlags, FsOpenFlags,
        MountAttrFlags,
    };
    let step = |what: &'static str| move |e: rustix::io::Errno| format!("{what}: {e}");
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(step("fsopen(tmpfs)"))?;
    for (key, value) in [("huge", "within_size"), ("size", "100%"), ("mode", "0700")] {
        fsconfig_set_string(fs.as_fd(), key, value).map_err(step("fsconfig"))?;
    }
    fsconfig_create(fs.as_fd()).map_err(step("fsconfig(create)"))?;
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(step("fsmount"))?;
    Ok(HugeTmpfs(mnt))
}

impl HugeTmpfs {
    /// A new file on the mount, unlinked at once (gone when its last descriptor and mapping
    /// are). Named as the memfd is, so `/proc/PID/fd` shows `/splitvisor-guest-ram.N (deleted)`.
    fn file(&self) -> std::io::Result<File> {
        use rustix::fs::{openat, unlinkat, AtFlags, Mode, OFlags};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "splitvisor-guest-ram.{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let fd = openat(
            &self.0,
            name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        unlinkat(&self.0, name.as_str(), AtFlags::empty())?;
        Ok(File::from(fd))
    }
}

/// The bracketed word of a transparent-huge-page policy file (`always [never]` → `never`).
fn policy(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// Whether shmem (memfds included) gives 2 MiB pages without being asked.
fn shmem_huge_by_itself(shmem: Option<&str>) -> bool {
    matches!(shmem, Some("always" | "within_size" | "force"))
}

fn memfd(hugetlb: bool) -> Result<File, MemoryError> {
    let mut flags = libc::MFD_CLOEXEC;
    if hugetlb {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"splitvisor-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a freshly created descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn free_hugepages() -> u64 {
    std::fs::read_to_string(FREE_HUGEPAGES)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The hugetlbfs pages `size` needs, if that many are free.
fn hugetlb_fits(size: u64) -> Result<(), MemoryError> {
    let need = size.div_ceil(HUGE_PAGE_SIZE);
    let free = free_hugepages();
    if free < need {
        return Err(MemoryError::NoHugepages { need, free });
    }
    Ok(())
}

/// Choose and create the backing of `cfg` (the file not yet sized).
pub fn create(cfg: &MemoryConfig) -> Result<Backing, MemoryError> {
    if !cfg.shared {
        let thp = matches!(policy(THP_ENABLED).as_deref(), Some("always" | "madvise"));
        return Ok(Backing {
            file: None,
            pages: thp_if(thp),
            advise_huge: thp,
        });
    }
    let shmem = policy(SHMEM_ENABLED);
    let shmem = shmem.as_deref();
    match cfg.hugepages {
        Some(true) => {
            hugetlb_fits(cfg.size.0)?;
            Backing::hugetlb()
        }
        Some(false) => Ok(Backing::shared(
            memfd(false)?,
            thp_if(shmem_huge_by_itself(shmem)),
            false,
        )),
        None => automatic(cfg.size.0, shmem),
    }
}

fn automatic(size: u64, shmem: Option<&str>) -> Result<Backing, MemoryError> {
    if shmem_huge_by_itself(shmem) {
        return Ok(Backing::shared(memfd(false)?, RamPages::Thp2M, false));
    }
    let mut tmpfs_problem = String::from("shmem_enabled is deny");
    if shmem != Some("deny") {
        match HUGE_TMPFS.get_or_init(mount_huge_tmpfs) {
            Ok(tmpfs) => match tmpfs.file() {
                Ok(file) => return Ok(Backing::shared(file, RamPages::Thp2M, false)),
                Err(e) => tmpfs_problem = format!("a file on it: {e}"),
            },
            Err(e) => tmpfs_problem = e.clone(),
        }
        tracing::debug!("guest RAM: no private huge-page tmpfs ({tmpfs_problem})");
        if shmem == Some("advise") {
            return Ok(Backing::shared(memfd(false)?, RamPages::Thp2M, true));
        }
    }
    if size.is_multiple_of(HUGE_PAGE_SIZE) && hugetlb_fits(size).is_ok() {
        return Backing::hugetlb();
    }
    tracing::warn!(
        "guest RAM in 4 KiB pages (a slower boot, more TLB misses): {SHMEM_ENABLED} is {}, \
         no private huge=within_size tmpfs ({tmpfs_problem}; mounting it needs CAP_SYS_ADMIN) \
         and fewer than {} free hugetlb pages; set shmem_enabled to advise, run the vmm with \
         CAP_SYS_ADMIN or reserve pages in {NR_HUGEPAGES} (--memory …,hugepages=off quiets this)",
        shmem.unwrap_or("unknown"),
        size.div_ceil(HUGE_PAGE_SIZE)
    );
    Ok(Backing::shared(memfd(false)?, RamPages::Small4K, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_the_bracketed_word() {
        let dir = std::env::temp_dir().join(format!("sv-policy-{}", std::process::id()));
        std::fs::write(&dir, "always within_size advise [never] deny force\n").unwrap();
        assert_eq!(policy(dir.to_str().unwrap()).as_deref(), Some("never"));
        std::fs::write(&dir, "no brackets\n").unwrap();
        assert_eq!(policy(dir.to_str().unwrap()), None);
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(policy("/nonexistent/shmem_enabled"), None);
    }

    #[test]
    fn only_the_forcing_policies_give_shmem_huge_pages_by_themselves() {
        for p in ["always", "within_size", "force"] {
            assert!(shmem_huge_by_itself(Some(p)), "{p}");
        }
        for p in ["advise", "never", "deny"] {
            assert!(!shmem_huge_by_itself(Some(p)), "{p}");
        }
        assert!(!shmem_huge_by_itself(None));
    }
}
