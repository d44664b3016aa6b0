//! A vCPU's snapshot state, end to end on the host's own /dev/kvm (64-bit guest code, no
//! Linux: PVM emulates these few kernel-mode instructions, but no SSE): a loop reads a step
//! from one port, adds it to a count and writes the count to another. Stopped at an `in`
//! whose value is given but not yet in AL, the vCPU finishes it, its state is read, written
//! as a snapshot section, read back and checked, and put into a vCPU of a second VM whose
//! RAM holds a copy of the first's. The second VM goes on exactly where the first was (the
//! `in` neither asked again nor lost: registers, segments, MSRs and LAPIC came across), and a
//! marker put in XMM0 before the run is there too.

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress};
use vmm::boot::EntryPoint;
use vmm::config::{ByteSize, MemoryConfig};
use vmm::memory::GuestRam;
use vmm::snapshot::caps::KvmCaps;
use vmm::snapshot::format::Sections;
use vmm::snapshot::vcpu_state::{self, VcpuState};

const CODE_ADDR: u64 = 0x10_0000;
/// Copied from the first VM to the second: the boot page tables, GDT and the code.
const COPIED: usize = 2 << 20;

#[rustfmt::skip]
const CODE: [u8; 22] = [
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x31, 0xdb,             // xor ebx, ebx
    // loop:
    0x66, 0xff, 0xc2,       // inc dx
    0xec,                   // in al, dx (from 0x3f9: the step)
    0x66, 0xff, 0xca,       // dec dx
    0x00, 0xc3,             // add bl, al
    0x89, 0xd8,             // mov eax, ebx
    0xee,                   // out dx, al (to 0x3f8: the count)
    0xeb, 0xf2,             // jmp loop
    0xf4, 0xf4,             // (hlt: never reached)
];
/// Right after the `in`: RIP once the pending `in` is finished.
const AFTER_IN: u64 = CODE_ADDR + 10;
/// What each `in` reads.
const STEP: u8 = 1;
/// XMM0 in the legacy XSAVE area: bytes 160..176, as 32-bit words 40..44.
const XMM0_WORDS: std::ops::Range<usize> = 40..44;
/// The XSAVE header's XSTATE_BV (byte 512).
const XSTATE_BV: usize = 128;
const MARKER: [u32; 4] = [0x5356_4e41, 0x5053_484f, 0x5420_584d, 0x4d30_2121];

fn machine(kvm: &Kvm) -> (VmFd, GuestRam) {
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    vm.create_pit2(Default::default()).unwrap();
    let ram = GuestRam::new(&MemoryConfig {
        size: ByteSize(32 << 20),
        ..MemoryConfig::default()
    })
    .unwrap();
    // SAFETY: each test's RAM outlives its VM's last KVM_RUN (both dropped at the end).
    unsafe { ram.register_with(&vm) }.unwrap();
    (vm, ram)
}

#[derive(Debug, PartialEq)]
enum Io {
    In,
    Out(u8),
}

/// Run until `count` port accesses (each `in` reads [`STEP`]); what they were.
fn run(vcpu: &mut VcpuFd, count: usize) -> Vec<Io> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoIn(0x3f9, data) => {
                data.fill(0);
                data[0] = STEP;
                seen.push(Io::In);
            }
            VcpuExit::IoOut(0x3f8, data) => seen.push(Io::Out(data[0])),
            other => panic!("unexpected exit {other:?} after {seen:?}"),
        }
    }
    seen
}

#[test]
fn a_vcpu_stopped_mid_loop_goes_on_in_another_vm_from_its_snapshot() {
    let kvm = Kvm::new()
        .expect("/dev/kvm is missing or inaccessible: this test runs a guest under the host's KVM");
    let (vm, ram) = machine(&kvm);
    let caps = KvmCaps::probe(&kvm, &vm);
    ram.memory()
        .write_slice(&CODE, GuestAddress(CODE_ADDR))
        .unwrap();
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vmm::cpu::set_cpuid(&vcpu, &supported, 0, 1).unwrap();
    vmm::cpu::configure(&vcpu, 0, ram.memory(), Some(EntryPoint::Linux64(CODE_ADDR))).unwrap();
    let mut xsave = vcpu.get_xsave().unwrap();
    xsave.region[XMM0_WORDS].copy_from_slice(&MARKER);
    xsave.region[XSTATE_BV] |= 0b10; // the SSE state is in the area (else XRSTOR zeroes it)
                                     // SAFETY: the area was just read from this vCPU, so it has the size KVM expects.
    unsafe { vcpu.set_xsave(&xsave) }.unwrap();
    use Io::{In, Out};
    let before = [In, Out(1), In, Out(2), In, Out(3), In];
    assert_eq!(run(&mut vcpu, before.len()), before);

    // stopped at the fourth `in`, its value given but not yet in AL: finish it (the vCPU
    // must neither ask again nor lose the value), then read everything
    vcpu_state::finish_pending_io(0, &mut vcpu, &caps, &mut |e| panic!("exit {e:?}")).unwrap();
    let state = vcpu_state::capture(0, &vcpu, &caps).unwrap();
    assert!(!state.msrs.is_empty() && !state.cpuid.is_empty());
    let mut sections = Sections::new();
    sections.put(
        "vcpu/0",
        vcpu_state::VERSION,
        serde_json::to_vec(&state).unwrap(),
    );
    let file = sections.to_bytes();
    let back = Sections::read(&file).unwrap();
    let state: VcpuState =
        serde_json::from_slice(back.get("vcpu/0", vcpu_state::VERSION).unwrap()).unwrap();
    assert_eq!(state.regs.rip, AFTER_IN, "RIP after the finished `in`");
    assert_eq!(
        state.regs.rax & 0xff,
        u64::from(STEP),
        "AL holds what the `in` read"
    );
    assert_eq!(state.xsave.region[XMM0_WORDS], MARKER);

    // the first VM goes on by itself: the snapshot changed nothing there
    assert_eq!(run(&mut vcpu, 2), [Out(4), In]);

    // a second VM with a copy of the RAM as it was (the loop keeps nothing in memory)
    let (vm2, ram2) = machine(&kvm);
    let mut copy = vec![0u8; COPIED];
    ram.memory().read_slice(&mut copy, GuestAddress(0)).unwrap();
    ram2.memory().write_slice(&copy, GuestAddress(0)).unwrap();
    let mut vcpu2 = vm2.create_vcpu(0).unwrap();
    vcpu_state::restore(0, &vcpu2, &state, &KvmCaps::probe(&kvm, &vm2)).unwrap();
    let after = [Out(4), In, Out(5), In, Out(6)];
    assert_eq!(
        run(&mut vcpu2, after.len()),
        after,
        "the restored loop goes on"
    );
    assert_eq!(vcpu2.get_xsave().unwrap().region[XMM0_WORDS], MARKER);
    drop((vcpu, vcpu2, vm, vm2));
}
