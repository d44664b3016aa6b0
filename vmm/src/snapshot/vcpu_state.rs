//! One vCPU's state in a snapshot: everything KVM holds for it, read with the vCPU stopped
//! (in its own thread, which owns the fd) and written back to a fresh vCPU in the order KVM
//! needs: CPUID first (MSRs and XSAVE are checked against it), the segment registers before
//! the LAPIC (the APIC base decides how its registers read), the TSC and its deadline last.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Xsave, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{KvmNestedStateBuffer, VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

use super::caps::KvmCaps;
use super::msrs;

/// The section version of [`VcpuState`].
pub const VERSION: u32 = 1;
/// The legacy XSAVE area KVM_GET_XSAVE fills.
const XSAVE_LEGACY: usize = std::mem::size_of::<kvm_xsave>();

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {vcpu}: cannot read {what}")]
    Get {
        vcpu: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {vcpu}: cannot restore {what}")]
    Set {
        vcpu: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {vcpu}: this host's KVM cannot {what}")]
    Unsupported { vcpu: u8, what: &'static str },
    #[error("vCPU {vcpu}: an I/O exit is still pending after {tries} tries", tries = PENDING_TRIES)]
    StillPending { vcpu: u8 },
}

/// How many exits [`finish_pending_io`] handles before giving up (a `rep outs` of many
/// bytes exits once per page).
const PENDING_TRIES: usize = 64;

/// The FPU, SSE and AVX state: KVM's 4 KiB XSAVE area (`region`), and beyond it what XSAVE2
/// adds (AMX).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XsaveState {
    pub region: Vec<u32>,
    pub extra: Vec<u32>,
}

impl XsaveState {
    fn legacy(&self) -> kvm_xsave {
        let mut x = kvm_xsave::default();
        let n = self.region.len().min(x.region.len());
        x.region[..n].copy_from_slice(&self.region[..n]);
        x
    }
}

/// (No `Debug`: the nested-state buffer has none.)
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: XsaveState,
    pub xcrs: Option<kvm_xcrs>,
    pub debugregs: Option<kvm_debugregs>,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: Option<kvm_vcpu_events>,
    pub tsc_khz: Option<u32>,
    pub nested: Option<KvmNestedStateBuffer>,
}

/// Finish the instruction a vCPU was in when it last exited to us (an `in` or an MMIO read
/// whose value KVM writes to the register only on the next KVM_RUN, an `out` whose RIP it
/// advances then): KVM_RUN with `immediate_exit` completes it and returns without running
/// guest code. An exit that needs us again (a string I/O's next chunk) goes to `on_exit`.
pub fn finish_pending_io(
    id: u8,
    vcpu: &mut VcpuFd,
    caps: &KvmCaps,
    on_exit: &mut dyn FnMut(VcpuExit),
) -> Result<(), VcpuStateError> {
    if !caps.immediate_exit {
        return Err(VcpuStateError::Unsupported {
            vcpu: id,
            what: "stop a vCPU between instructions (KVM_CAP_IMMEDIATE_EXIT)",
        });
    }
    for _ in 0..PENDING_TRIES {
        vcpu.set_kvm_immediate_exit(1);
        let result = vcpu.run();
        let done = match result {
            Err(e) if e.errno() == libc::EINTR => true,
            Err(source) => {
                vcpu.set_kvm_immediate_exit(0);
                return Err(VcpuStateError::Get {
                    vcpu: id,
                    what: "the end of its pending I/O",
                    source,
                });
            }
            Ok(exit) => {
                on_exit(exit);
                false
            }
        };
        vcpu.set_kvm_immediate_exit(0);
        if done {
            return Ok(());
        }
    }
    Err(VcpuStateError::StillPending { vcpu: id })
}

/// Read vCPU `id`'s state (stopped, its pending I/O finished).
pub fn capture(id: u8, vcpu: &VcpuFd, caps: &KvmCaps) -> Result<VcpuState, VcpuStateError> {
    let get = |what| {
        move |source| VcpuStateError::Get {
            vcpu: id,
            what,
            source,
        }
    };
    let nested = if caps.nested_state {
        let mut buffer = KvmNestedStateBuffer::empty();
        vcpu.nested_state(&mut buffer)
            .map_err(get("the nested state"))?
            .map(|_| buffer)
    } else {
        None
    };
    Ok(VcpuState {
        cpuid: vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(get("the CPUID"))?
            .as_slice()
            .to_vec(),
        mp_state: vcpu.get_mp_state().map_err(get("the MP state"))?,
        regs: vcpu.get_regs().map_err(get("the registers"))?,
        sregs: vcpu.get_sregs().map_err(get("the segment registers"))?,
        xsave: capture_xsave(id, vcpu, caps)?,
        xcrs: match caps.xcrs {
            true => Some(vcpu.get_xcrs().map_err(get("the XCRs"))?),
            false => None,
        },
        debugregs: match caps.debugregs {
            true => Some(vcpu.get_debug_regs().map_err(get("the debug registers"))?),
            false => None,
        },
        lapic: vcpu.get_lapic().map_err(get("the LAPIC"))?,
        msrs: msrs::get(vcpu, &caps.msrs).map_err(get("the MSRs"))?,
        events: match caps.vcpu_events {
            true => Some(vcpu.get_vcpu_events().map_err(get("the pending events"))?),
            false => None,
        },
        // KVM's error here does not carry the errno: any error means "not known"
        tsc_khz: caps.get_tsc_khz.then(|| vcpu.get_tsc_khz().ok()).flatten(),
        nested,
    })
}

fn capture_xsave(id: u8, vcpu: &VcpuFd, caps: &KvmCaps) -> Result<XsaveState, VcpuStateError> {
    let get = |source| VcpuStateError::Get {
        vcpu: id,
        what: "the FPU and vector registers (XSAVE)",
        source,
    };
    if caps.xsave2_size > XSAVE_LEGACY {
        let mut buffer = xsave2_buffer(caps.xsave2_size).map_err(get)?;
        // SAFETY: the buffer holds the `xsave2_size` bytes KVM_CAP_XSAVE2 reported, all
        // KVM_GET_XSAVE2 writes (no feature is enabled dynamically in this process after the
        // probe).
        unsafe { vcpu.get_xsave2(&mut buffer) }.map_err(get)?;
        return Ok(XsaveState {
            region: buffer.as_fam_struct_ref().xsave.region.to_vec(),
            extra: buffer.as_slice().to_vec(),
        });
    }
    if !caps.xsave {
        return Err(VcpuStateError::Unsupported {
            vcpu: id,
            what: "read the FPU and vector registers (KVM_CAP_XSAVE)",
        });
    }
    Ok(XsaveState {
        region: vcpu.get_xsave().map_err(get)?.region.to_vec(),
        extra: Vec::new(),
    })
}

/// An XSAVE2 buffer of `size` bytes.
fn xsave2_buffer(size: usize) -> Result<Xsave, kvm_ioctls::Error> {
    let words = (size - XSAVE_LEGACY).div_ceil(4);
    Xsave::new(words).map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))
}

/// Write `s` to the fresh vCPU `id` (created, nothing run yet).
pub fn restore(id: u8, vcpu: &VcpuFd, s: &VcpuState, caps: &KvmCaps) -> Result<(), VcpuStateError> {
    let set = |what| {
        move |source| VcpuStateError::Set {
            vcpu: id,
            what,
            source,
        }
    };
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| VcpuStateError::Set {
        vcpu: id,
        what: "the CPUID (too many entries)",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(set("the CPUID"))?;
    if let Some(khz) = s.tsc_khz {
        let now = caps.get_tsc_khz.then(|| vcpu.get_tsc_khz().ok()).flatten();
        if now != Some(khz) {
            let scaled = caps.tsc_control && vcpu.set_tsc_khz(khz).is_ok();
            if !scaled {
                tracing::warn!(
                    vcpu = id,
                    saved_khz = khz,
                    host_khz = ?now,
                    "this host cannot run the guest's TSC at its saved rate: the guest's time may drift"
                );
            }
        }
    }
    vcpu.set_sregs(&s.sregs)
        .map_err(set("the segment registers"))?;
    if let Some(nested) = &s.nested {
        if !caps.nested_state {
            return Err(VcpuStateError::Unsupported {
                vcpu: id,
                what: "restore the nested guest the snapshot holds (KVM_CAP_NESTED_STATE)",
            });
        }
        vcpu.set_nested_state(nested)
            .map_err(set("the nested state"))?;
    }
    vcpu.set_lapic(&s.lapic).map_err(set("the LAPIC"))?;
    vcpu.set_regs(&s.regs).map_err(set("the registers"))?;
    restore_xsave(id, vcpu, &s.xsave, caps)?;
    if let Some(xcrs) = &s.xcrs {
        vcpu.set_xcrs(xcrs).map_err(set("the XCRs"))?;
    }
    if let Some(d) = &s.debugregs {
        vcpu.set_debug_regs(d).map_err(set("the debug registers"))?;
    }
    let (rest, tsc) = msrs::split_tsc(&s.msrs);
    msrs::set(vcpu, &rest).map_err(set("the MSRs"))?;
    vcpu.set_mp_state(s.mp_state).map_err(set("the MP state"))?;
    if let Some(events) = &s.events {
        vcpu.set_vcpu_events(events)
            .map_err(set("the pending events"))?;
    }
    msrs::set(vcpu, &tsc).map_err(set("the TSC"))?;
    Ok(())
}

fn restore_xsave(
    id: u8,
    vcpu: &VcpuFd,
    x: &XsaveState,
    caps: &KvmCaps,
) -> Result<(), VcpuStateError> {
    let set = |source| VcpuStateError::Set {
        vcpu: id,
        what: "the FPU and vector registers (XSAVE)",
        source,
    };
    if caps.xsave2_size > XSAVE_LEGACY {
        let mut buffer = xsave2_buffer(caps.xsave2_size).map_err(set)?;
        if x.extra.len() > buffer.as_slice().len() {
            return Err(VcpuStateError::Unsupported {
                vcpu: id,
                what: "hold the guest's whole XSAVE state (the snapshot's host had more)",
            });
        }
        // SAFETY: only the fixed 4 KiB area is written, not the length the wrapper relies on.
        unsafe { buffer.as_mut_fam_struct() }.xsave.region = x.legacy().region;
        buffer.as_mut_slice()[..x.extra.len()].copy_from_slice(&x.extra);
        // SAFETY: the buffer has the size KVM_CAP_XSAVE2 reported, all KVM_SET_XSAVE reads.
        return unsafe { vcpu.set_xsave2(&buffer) }.map_err(set);
    }
    if !x.extra.is_empty() {
        return Err(VcpuStateError::Unsupported {
            vcpu: id,
            what: "hold the guest's whole XSAVE state (no KVM_CAP_XSAVE2)",
        });
    }
    // SAFETY: without XSAVE2 KVM reads exactly the 4 KiB legacy area we pass.
    unsafe { vcpu.set_xsave(&x.legacy()) }.map_err(set)
}
