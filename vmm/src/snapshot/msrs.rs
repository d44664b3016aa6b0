//! Reading and writing a vCPU's MSRs in batches. KVM stops a batch at the first MSR it
//! refuses and says how many it did; the refused one is skipped (logged) and the rest go on,
//! as Cloud Hypervisor and QEMU do. The TSC and the TSC deadline are written apart, last
//! (after the LAPIC, or the deadline timer is dropped).

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// KVM's limit on entries per KVM_GET_MSRS / KVM_SET_MSRS.
const BATCH: usize = 255;

/// The values of `indices` that KVM gives (the ones it refuses are left out).
pub fn get(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, kvm_ioctls::Error> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    while !rest.is_empty() {
        let n = rest.len().min(BATCH);
        let mut batch = Msrs::from_entries(&rest[..n]).map_err(|_| fam_error())?;
        let done = vcpu.get_msrs(&mut batch)?;
        out.extend_from_slice(&batch.as_slice()[..done.min(n)]);
        if done < n {
            tracing::debug!(
                msr = rest[done].index,
                "KVM does not read this MSR: not saved"
            );
            rest.drain(..=done);
        } else {
            rest.drain(..n);
        }
    }
    Ok(out)
}

/// Write `entries` (those KVM refuses are logged and skipped). How many it took.
pub fn set(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<usize, kvm_ioctls::Error> {
    let mut taken = 0;
    let mut rest = entries;
    while !rest.is_empty() {
        let n = rest.len().min(BATCH);
        let batch = Msrs::from_entries(&rest[..n]).map_err(|_| fam_error())?;
        let done = vcpu.set_msrs(&batch)?.min(n);
        taken += done;
        if done < n {
            tracing::warn!(
                msr = format_args!("{:#x}", rest[done].index),
                "KVM refuses this saved MSR: not restored"
            );
            rest = &rest[done + 1..];
        } else {
            rest = &rest[n..];
        }
    }
    Ok(taken)
}

/// The entries but the TSC and its deadline, and those two (TSC first), to be written last.
pub fn split_tsc(entries: &[kvm_msr_entry]) -> (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) {
    let is_tsc = |e: &&kvm_msr_entry| e.index == MSR_IA32_TSC || e.index == MSR_IA32_TSC_DEADLINE;
    let mut last: Vec<kvm_msr_entry> = entries.iter().filter(is_tsc).copied().collect();
    last.sort_by_key(|e| e.index); // 0x10 before 0x6e0
    let rest = entries.iter().filter(|e| !is_tsc(e)).copied().collect();
    (rest, last)
}

fn fam_error() -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(libc::ENOMEM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tsc_and_its_deadline_go_last_in_that_order() {
        let e = |index| kvm_msr_entry {
            index,
            data: u64::from(index),
            ..Default::default()
        };
        let (rest, last) = split_tsc(&[e(0x6e0), e(0x1b), e(0x10), e(0xc000_0080)]);
        assert_eq!(
            rest.iter().map(|e| e.index).collect::<Vec<_>>(),
            [0x1b, 0xc000_0080]
        );
        assert_eq!(
            last.iter().map(|e| e.index).collect::<Vec<_>>(),
            [0x10, 0x6e0]
        );
    }
}
