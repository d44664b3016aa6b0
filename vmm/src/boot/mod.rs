//! Loading the guest: kernel (bzImage or ELF vmlinux, through linux-loader), initramfs,
//! command line, ACPI tables and boot parameters. Produces the entry point the boot vCPU starts
//! at; the CPU state for it is set up in [`crate::cpu`].

pub mod acpi;
mod acpi_cpus;
mod acpi_hotplug;
pub mod params;
mod reset_vector;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use crate::config::VmConfig;
use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::memory::GuestRam;
use params::BootLayout;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit Linux boot protocol: long mode, paging on, `rsi` = zero page.
    Linux64(u64),
    /// PVH: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
    Pvh(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read the kernel {path}")]
    KernelRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a Linux kernel: neither an ELF vmlinux nor a bzImage")]
    NotAKernel(PathBuf),
    #[error("cannot load the kernel {path}: {detail}")]
    KernelLoad { path: PathBuf, detail: String },
    #[error("cannot read the initramfs {path}")]
    InitramfsRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the initramfs {path} ({size_mib} MiB) does not fit in guest memory above the kernel: give the VM more --memory")]
    InitramfsTooLarge { path: PathBuf, size_mib: u64 },
    #[error("the kernel command line is {0} bytes; the limit is {max}", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("cannot write the reset vector to guest memory")]
    ResetVector(#[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Params(#[from] params::ParamsError),
}

enum KernelFormat {
    Elf,
    BzImage,
}

fn detect_format(path: &Path, file: &mut File) -> Result<KernelFormat, BootError> {
    let read_err = |source| BootError::KernelRead {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 0x206];
    let n = file.read(&mut head).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(BootError::NotAKernel(path.to_path_buf()))
    }
}

/// The kernel image, opened and recognised by [`check_inputs`].
pub struct Kernel {
    path: PathBuf,
    file: File,
    format: KernelFormat,
}

/// Check that the kernel is a readable kernel and the initramfs a readable file, before any
/// resource is allocated for the VM. The opened kernel goes on to [`load`].
pub fn check_inputs(cfg: &VmConfig) -> Result<Kernel, BootError> {
    let path = cfg.kernel.clone().unwrap_or_default();
    let mut file = File::open(&path).map_err(|source| BootError::KernelRead {
        path: path.clone(),
        source,
    })?;
    let format = detect_format(&path, &mut file)?;
    if let Some(path) = &cfg.initramfs {
        let read_err = |source| BootError::InitramfsRead {
            path: path.clone(),
            source,
        };
        let mut f = File::open(path).map_err(read_err)?;
        f.read(&mut [0u8; 1]).map_err(read_err)?;
    }
    Ok(Kernel { path, file, format })
}

/// Load everything into guest memory and return where the boot vCPU starts.
pub fn load(ram: &GuestRam, cfg: &VmConfig, kernel: Kernel) -> Result<EntryPoint, BootError> {
    let mem = ram.memory();
    let Kernel {
        path: kernel_path,
        file: mut kernel,
        format,
    } = kernel;
    let load_err = |e: linux_loader::loader::Error| BootError::KernelLoad {
        path: kernel_path.clone(),
        detail: e.to_string(),
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let loaded = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut kernel, himem).map_err(load_err)?,
        KernelFormat::BzImage => BzImage::load(mem, None, &mut kernel, himem).map_err(load_err)?,
    };
    let entry = match (format, loaded.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(addr)) => EntryPoint::Pvh(addr.0),
        (KernelFormat::Elf, _) => EntryPoint::Linux64(loaded.kernel_load.0),
        // startup_64 sits 0x200 bytes into a bzImage's protected-mode code
        (KernelFormat::BzImage, _) => EntryPoint::Linux64(loaded.kernel_load.0 + 0x200),
    };
    tracing::info!(kernel = %kernel_path.display(), ?entry, end = loaded.kernel_end, "kernel loaded");

    let initramfs = match &cfg.initramfs {
        Some(path) => Some(load_initramfs(ram, path, loaded.kernel_end)?),
        None => None,
    };

    let cmdline_str = cfg.effective_cmdline();
    if cmdline_str.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong(cmdline_str.len()));
    }
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(cmdline_str)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    let rsdp = acpi::write_tables(mem, cfg.cpus, cfg.max_vcpus())?;
    reset_vector::write(mem).map_err(BootError::ResetVector)?;
    let layout = BootLayout {
        low_ram_end: ram.low_ram_end(),
        ram_size: ram.size(),
        cmdline_len: cmdline_str.len() + 1,
        initramfs,
        rsdp,
    };
    match entry {
        EntryPoint::Pvh(_) => params::write_pvh_start_info(mem, &layout)?,
        EntryPoint::Linux64(_) => params::write_zero_page(mem, loaded.setup_header, &layout)?,
    }
    Ok(entry)
}

/// Place the initramfs page-aligned at the top of low RAM (below 2 GiB, the kernel's
/// `initrd_addr_max` default) and read it there. Returns `(address, size)`.
fn load_initramfs(ram: &GuestRam, path: &Path, kernel_end: u64) -> Result<(u64, u64), BootError> {
    let read_err = |source| BootError::InitramfsRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let top = ram.low_ram_end().min(0x8000_0000);
    let too_large = || BootError::InitramfsTooLarge {
        path: path.to_path_buf(),
        size_mib: size.div_ceil(1 << 20),
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    ram.memory()
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| read_err(std::io::Error::other(e.to_string())))?;
    tracing::info!(initramfs = %path.display(), addr, size, "initramfs loaded");
    Ok((addr, size))
}
