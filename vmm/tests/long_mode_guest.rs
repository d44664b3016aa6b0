//! A few instructions of 64-bit guest code, entered through splitvisor's own boot CPU setup
//! (GDT, identity page tables, long-mode segment registers, MSRs, LAPIC) on shared-memfd guest
//! RAM, doing port and MMIO I/O; then the vCPU is put back to its power-on state, as at a guest
//! reboot, and runs the same code again. Needs no Linux, so it runs on the host's own /dev/kvm
//! (including PVM, which emulates these few kernel-mode instructions).

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress};
use vmm::boot::EntryPoint;
use vmm::config::{ByteSize, MemoryConfig};
use vmm::devices::acpi_pm::SLEEP_CONTROL_PORT;
use vmm::memory::GuestRam;
use vmm::power_on::PowerOnState;

const CODE_ADDR: u64 = 0x10_0000;
/// In the 32-bit hole: mapped by the boot page tables, backed by no RAM.
const MMIO_ADDR: u32 = 0xd000_0000;

#[derive(Debug, PartialEq)]
enum Exit {
    Out(u16, u8),
    MmioWrite(u64, u8),
    MmioRead(u64),
}

#[test]
fn long_mode_code_does_port_and_mmio_io_and_runs_again_after_a_reset() {
    let kvm = Kvm::new()
        .expect("/dev/kvm is missing or inaccessible: this test runs a guest under the host's KVM");
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    vm.create_pit2(Default::default()).unwrap();
    let ram = GuestRam::new(&MemoryConfig {
        size: ByteSize(64 << 20),
        ..MemoryConfig::default()
    })
    .unwrap();
    // SAFETY: `ram` lives until the end of the test, after the last KVM_RUN.
    unsafe { ram.register_with(&vm) }.unwrap();
    let mmio = MMIO_ADDR.to_le_bytes();
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf8, 0x03,                   // mov dx, 0x3f8
        0x0f, 0x20, 0xe0,                         // mov rax, cr4
        0xee,                                     // out dx, al
        0x48, 0x83, 0xc8, 0x04,                   // or rax, 4 (CR4.TSD: left set at "reboot")
        0x0f, 0x22, 0xe0,                         // mov cr4, rax
        0xb0, b'L',                               // mov al, 'L'
        0xee,                                     // out dx, al
        0xbb, mmio[0], mmio[1], mmio[2], mmio[3], // mov ebx, MMIO_ADDR
        0xc6, 0x03, 0x5a,                         // mov byte [rbx], 0x5a
        0x8a, 0x43, 0x08,                         // mov al, [rbx + 8]
        0xee,                                     // out dx, al
        0x66, 0xba, 0xc0, 0x03,                   // mov dx, 0x3c0 (ACPI sleep control)
        0xb0, 0x34,                               // mov al, SLP_TYP 5 | SLP_EN
        0xee,                                     // out dx, al
        0xf4,                                     // hlt
    ];
    ram.memory()
        .write_slice(&code, GuestAddress(CODE_ADDR))
        .unwrap();
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vmm::cpu::set_cpuid(&vcpu, &supported, 0, 1).unwrap();
    let mut power_on = PowerOnState::save_platform(&vm).unwrap();
    power_on.save_vcpu(&vcpu).unwrap();
    let entry = Some(EntryPoint::Linux64(CODE_ADDR));
    vmm::cpu::configure(&vcpu, 0, ram.memory(), entry).unwrap();
    let expected = vec![
        Exit::Out(0x3f8, 0x20), // CR4 as the boot setup left it: PAE only
        Exit::Out(0x3f8, b'L'),
        Exit::MmioWrite(u64::from(MMIO_ADDR), 0x5a),
        Exit::MmioRead(u64::from(MMIO_ADDR) + 8),
        Exit::Out(0x3f8, b'!'),
        Exit::Out(SLEEP_CONTROL_PORT, 0x34),
    ];
    assert_eq!(run_to_poweroff(&mut vcpu), expected);

    // the reboot path: power-on state back, boot configuration again, same run
    power_on.restore_platform(&vm).unwrap();
    power_on.restore_vcpu(0, &vcpu).unwrap();
    vmm::cpu::configure(&vcpu, 0, ram.memory(), entry).unwrap();
    assert_eq!(run_to_poweroff(&mut vcpu), expected, "after the reset");

    // and that last write is exactly what the vmm treats as a guest power-off
    assert_eq!(
        vmm::devices::acpi_pm::write(SLEEP_CONTROL_PORT, 0x34),
        Some(vmm::exit::VmExit::PowerOff)
    );
}

fn run_to_poweroff(vcpu: &mut kvm_ioctls::VcpuFd) -> Vec<Exit> {
    let mut exits = Vec::new();
    for _ in 0..16 {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => {
                exits.push(Exit::Out(port, data[0]));
                if port == SLEEP_CONTROL_PORT {
                    break;
                }
            }
            VcpuExit::MmioWrite(addr, data) => exits.push(Exit::MmioWrite(addr, data[0])),
            VcpuExit::MmioRead(addr, data) => {
                data.fill(0);
                data[0] = b'!';
                exits.push(Exit::MmioRead(addr));
            }
            other => panic!("unexpected exit {other:?} after {exits:?}"),
        }
    }
    exits
}
