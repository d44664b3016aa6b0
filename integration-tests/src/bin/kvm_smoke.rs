//! `sv-kvm-smoke`: the smallest real KVM guest. Creates a VM whose memory is a shared memfd
//! mapping (as splitvisor's guest RAM is), runs a few real-mode instructions doing port and MMIO
//! I/O, and checks that KVM reports exactly the expected exits. Prints one line per exit and
//! `KVM-SMOKE OK` (exit 0) or a mismatch (exit 1).
//!
//! Used by the sandbox test (inside L1, real kvm-amd) and runnable on any /dev/kvm.

use std::fs::File;
use std::os::fd::FromRawFd;

use anyhow::{bail, Context, Result};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const MEM_SIZE: usize = 0x10000;
const CODE_ADDR: u64 = 0x1000;
/// DS base of the guest: just past RAM, so `[ds:x]` accesses are MMIO exits.
const MMIO_BASE: u64 = 0x10000;
const SERIAL_PORT: u16 = 0x3f8;
const MMIO_READ_VALUE: u8 = b'!';

/// 16-bit real-mode code: two port writes, an MMIO write, an MMIO read whose value is written
/// back to the port, then `hlt`.
const CODE: &[u8] = &[
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'S', // mov al, 'S'
    0xee, // out dx, al
    0xb0, b'V', // mov al, 'V'
    0xee, // out dx, al
    0xc6, 0x06, 0x00, 0x00, 0x42, // mov byte [0x0000], 0x42   (MMIO write)
    0xa0, 0x10, 0x00, // mov al, [0x0010]            (MMIO read)
    0xee, // out dx, al
    0xf4, // hlt
];

#[derive(Debug, PartialEq)]
enum Exit {
    IoOut(u16, Vec<u8>),
    MmioWrite(u64, Vec<u8>),
    MmioRead(u64, usize),
    Hlt,
}

fn guest_memory() -> Result<GuestMemoryMmap> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked below.
    let fd = unsafe { libc::memfd_create(c"sv-kvm-smoke".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create failed");
    }
    // SAFETY: fd is a freshly created descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64)
        .context("cannot size the memfd")?;
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])
    .context("cannot map guest memory")
}

fn run() -> Result<Vec<Exit>> {
    let kvm = Kvm::new().context("cannot open /dev/kvm")?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM failed")?;
    let mem = guest_memory()?;
    mem.write_slice(CODE, GuestAddress(CODE_ADDR))
        .context("cannot write the guest code")?;
    let host_addr = mem
        .get_host_address(GuestAddress(0))
        .context("guest memory has no host mapping")?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host_addr as u64,
    };
    // SAFETY: the region is a live mapping of MEM_SIZE bytes owned by `mem`, which outlives `vm`.
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION failed")?;

    let mut vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU failed")?;
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS failed")?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = MMIO_BASE;
    sregs.ds.selector = (MMIO_BASE >> 4) as u16;
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS failed")?;
    let mut regs = vcpu.get_regs().context("KVM_GET_REGS failed")?;
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).context("KVM_SET_REGS failed")?;

    let mut exits = Vec::new();
    for _ in 0..16 {
        let exit = match vcpu.run().context("KVM_RUN failed")? {
            VcpuExit::IoOut(port, data) => Exit::IoOut(port, data.to_vec()),
            VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite(addr, data.to_vec()),
            VcpuExit::MmioRead(addr, data) => {
                data.fill(0);
                data[0] = MMIO_READ_VALUE;
                Exit::MmioRead(addr, data.len())
            }
            VcpuExit::Hlt => Exit::Hlt,
            other => bail!("unexpected exit {other:?}"),
        };
        println!("exit: {exit:?}");
        let done = exit == Exit::Hlt;
        exits.push(exit);
        if done {
            break;
        }
    }
    Ok(exits)
}

fn main() -> Result<()> {
    let exits = run()?;
    let expected = vec![
        Exit::IoOut(SERIAL_PORT, vec![b'S']),
        Exit::IoOut(SERIAL_PORT, vec![b'V']),
        Exit::MmioWrite(MMIO_BASE, vec![0x42]),
        Exit::MmioRead(MMIO_BASE + 0x10, 1),
        Exit::IoOut(SERIAL_PORT, vec![MMIO_READ_VALUE]),
        Exit::Hlt,
    ];
    if exits != expected {
        println!("KVM-SMOKE MISMATCH: expected {expected:?}");
        std::process::exit(1);
    }
    println!("KVM-SMOKE OK {} exits", exits.len());
    Ok(())
}
