//! Adding and removing vCPUs while the guest runs (`vm.resize`, docs/hotplug.md), up to the
//! VM's `max_cpus`. The ACPI side is the CPU hotplug controller
//! ([`crate::devices::cpu_hotplug`]) and `\_SB_.CPUS` (`boot/acpi_cpus.rs`).
//!
//! Adding vCPU `id`: KVM_CREATE_VCPU, its CPUID (with the topology of `max_cpus`, as the boot
//! vCPUs have), its power-on state saved, set up as a boot AP (MSRs, FPU, LINT0/1: it waits
//! for INIT/SIPI in the in-kernel LAPIC), its thread started and known to the pause machinery,
//! then the guest told (device check on `Cxxx`). The guest brings it online when asked
//! (`echo 1 > /sys/devices/system/cpu/cpuN/online`, or a udev rule).
//!
//! Removing: the guest is asked (eject request), offlines the CPU itself and calls `_EJ0`;
//! then the thread leaves the pause machinery, is stopped (kicked out of KVM_RUN) and joined.
//! KVM cannot destroy a vCPU: its descriptor is kept, and the vCPU is put back to its
//! power-on state when it is added again. A reboot goes back to the boot vCPUs.

use std::collections::BTreeMap;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::config::SeccompMode;
use crate::devices::ged::EVENT_CPU;
use crate::devices::Devices;
use crate::power_on::VcpuState;
use crate::run_control::RunControl;

/// How long a stopping vCPU thread gets to end.
const STOP_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum VcpuHotplugError {
    #[error("{want} vCPUs is out of range: this VM has {boot} to {max} (its boot vCPUs stay; --max-cpus sets the most)")]
    OutOfRange { want: u8, boot: u8, max: u8 },
    #[error("cannot add vCPU {id}: {why}")]
    Add { id: u8, why: String },
    #[error("the guest did not give up vCPU {id} within {waited:?} (it is still online there)")]
    NotEjected { id: u8, waited: Duration },
    #[error("vCPU {id}'s thread did not stop")]
    Stuck { id: u8 },
}

enum Slot {
    Running {
        thread: JoinHandle<VcpuFd>,
        stop: Arc<AtomicBool>,
        power_on: VcpuState,
    },
    Parked {
        vcpu: VcpuFd,
        power_on: VcpuState,
    },
}

/// What a vCPU hotplug needs of the VM.
pub struct VcpuHotplug {
    pub vm: Arc<VmFd>,
    pub cpuid: CpuId,
    pub boot: u8,
    pub max: u8,
    pub mem: GuestMemoryMmap,
    pub devices: Arc<Devices>,
    pub control: Arc<RunControl>,
    pub seccomp: SeccompMode,
    /// The vCPUs added (running) or added once and given up (parked), by id.
    slots: Mutex<BTreeMap<u8, Slot>>,
}

impl VcpuHotplug {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: Arc<VmFd>,
        cpuid: CpuId,
        (boot, max): (u8, u8),
        mem: GuestMemoryMmap,
        devices: Arc<Devices>,
        control: Arc<RunControl>,
        seccomp: SeccompMode,
    ) -> VcpuHotplug {
        VcpuHotplug {
            vm,
            cpuid,
            boot,
            max,
            mem,
            devices,
            control,
            seccomp,
            slots: Mutex::default(),
        }
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<u8, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> Vec<u8> {
        let slots = self.slots();
        slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Running { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The vCPUs the VM has now.
    pub fn count(&self) -> u8 {
        self.boot + self.running().len() as u8
    }

    /// Whether vCPUs were added (and are still there).
    pub fn has_added(&self) -> bool {
        !self.running().is_empty()
    }

    /// Add or remove vCPUs until the VM has `want` (the highest ids go first); each removal
    /// waits up to `eject_wait` for the guest. The count reached.
    pub fn resize(&self, want: u8, eject_wait: Duration) -> Result<u8, VcpuHotplugError> {
        if want < self.boot || want > self.max {
            return Err(VcpuHotplugError::OutOfRange {
                want,
                boot: self.boot,
                max: self.max,
            });
        }
        while self.count() < want {
            let running = self.running();
            let id = (self.boot..self.max)
                .find(|id| !running.contains(id))
                .ok_or(VcpuHotplugError::OutOfRange {
                    want,
                    boot: self.boot,
                    max: self.max,
                })?;
            self.add(id)?;
        }
        while self.count() > want {
            let Some(&id) = self.running().last() else {
                break;
            };
            self.remove(id, eject_wait)?;
        }
        Ok(self.count())
    }

    fn add(&self, id: u8) -> Result<(), VcpuHotplugError> {
        let fail = |why: String| VcpuHotplugError::Add { id, why };
        let (vcpu, power_on) = match self.slots().remove(&id) {
            Some(Slot::Parked { vcpu, power_on }) => {
                power_on
                    .restore(id.into(), &vcpu)
                    .map_err(|e| fail(crate::error_chain(&e)))?;
                (vcpu, power_on)
            }
            Some(running @ Slot::Running { .. }) => {
                self.slots().insert(id, running);
                return Ok(());
            }
            None => {
                let vcpu = self
                    .vm
                    .create_vcpu(u64::from(id))
                    .map_err(|e| fail(format!("KVM_CREATE_VCPU: {e}")))?;
                crate::cpu::set_cpuid(&vcpu, &self.cpuid, id, self.max)
                    .map_err(|e| fail(crate::error_chain(&e)))?;
                let power_on =
                    VcpuState::save(id.into(), &vcpu).map_err(|e| fail(crate::error_chain(&e)))?;
                (vcpu, power_on)
            }
        };
        if let Err(e) = crate::cpu::configure(&vcpu, id, &self.mem, None) {
            self.slots().insert(id, Slot::Parked { vcpu, power_on });
            return Err(fail(crate::error_chain(&e)));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = crate::vcpu::spawn(
            id,
            vcpu,
            self.devices.clone(),
            self.control.clone(),
            self.seccomp,
            stop.clone(),
        )
        .map_err(|e| fail(format!("its thread: {e}")))?;
        self.control.add_thread(thread.as_pthread_t());
        self.slots().insert(
            id,
            Slot::Running {
                thread,
                stop,
                power_on,
            },
        );
        self.devices.cpu_hotplug.announce_added(id);
        if let Err(e) = self.devices.ged.notify(EVENT_CPU) {
            tracing::warn!("cannot raise the GED's CPU event: {e}");
        }
        tracing::info!(vcpu = id, "vCPU added");
        Ok(())
    }

    fn remove(&self, id: u8, eject_wait: Duration) -> Result<(), VcpuHotplugError> {
        self.devices.cpu_hotplug.request_removal(id);
        if let Err(e) = self.devices.ged.notify(EVENT_CPU) {
            tracing::warn!("cannot raise the GED's CPU event: {e}");
        }
        if !self.devices.cpu_hotplug.wait_ejected(id, eject_wait) {
            return Err(VcpuHotplugError::NotEjected {
                id,
                waited: eject_wait,
            });
        }
        self.park(id)?;
        tracing::info!(vcpu = id, "vCPU removed");
        Ok(())
    }

    /// Stop vCPU `id`'s thread and keep its descriptor.
    fn park(&self, id: u8) -> Result<(), VcpuHotplugError> {
        let Some(Slot::Running {
            thread,
            stop,
            power_on,
        }) = self.slots().remove(&id)
        else {
            return Ok(());
        };
        self.control.remove_thread(thread.as_pthread_t());
        stop.store(true, Ordering::Release);
        // kicked out of KVM_RUN until it sees `stop`, as the VM's exit stops the boot vCPUs
        let vcpu = crate::vcpu::stop_all(vec![thread], STOP_LIMIT)
            .and_then(|mut v| v.pop())
            .ok_or(VcpuHotplugError::Stuck { id })?;
        self.slots().insert(id, Slot::Parked { vcpu, power_on });
        Ok(())
    }

    /// The VM stops or resets: every added vCPU's thread ends (it sees the exit once kicked).
    pub fn stop_all(&self) {
        for id in self.running() {
            if let Err(e) = self.park(id) {
                tracing::warn!("{e}");
            }
        }
    }
}
