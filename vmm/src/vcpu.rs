//! One thread per vCPU: run it and route its exits (port I/O to the legacy devices, system
//! events to the VM's exit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::Devices;
use crate::exit::VmExit;
use crate::run_control::RunControl;

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// Kick every vCPU thread out of `KVM_RUN` until it has seen the exit (or its stop flag) and
/// ended, and give back the vCPUs in id order. Bounded: if a thread does not end within `limit` it is left
/// behind and `None` is returned (the VM cannot run again; the process exits anyway).
pub fn stop_all(
    threads: Vec<std::thread::JoinHandle<VcpuFd>>,
    limit: std::time::Duration,
) -> Option<Vec<VcpuFd>> {
    use vmm_sys_util::signal::Killable;
    let start = std::time::Instant::now();
    let mut stopped: Vec<Option<VcpuFd>> = Vec::new();
    stopped.resize_with(threads.len(), || None);
    let mut running: Vec<_> = threads.into_iter().enumerate().collect();
    while !running.is_empty() && start.elapsed() < limit {
        let (done, rest): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|(_, t)| t.is_finished());
        for (id, t) in done {
            stopped[id] = t.join().ok();
        }
        for (_, t) in &rest {
            let _ = t.kill(crate::signals::vcpu_kick_signal());
        }
        running = rest;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if !running.is_empty() {
        tracing::warn!(count = running.len(), "vCPU threads did not stop in time");
    }
    stopped.into_iter().collect()
}

/// Start vCPU `id`'s thread; it confines itself further (`seccomp`, the vCPU filter of
/// `confinement.rs`) before it first runs guest code. It ends when the VM exits, or when
/// `stop` is set and it is kicked (a vCPU the guest gave up, `vcpu_hotplug.rs`).
pub fn spawn(
    id: u8,
    vcpu: VcpuFd,
    devices: Arc<Devices>,
    control: Arc<RunControl>,
    seccomp: crate::config::SeccompMode,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<VcpuFd>> {
    crate::threads::builder(format!("vcpu{id}")).spawn(move || {
        if let Err(e) = crate::confinement::install_vcpu(id, seccomp) {
            let why = format!("vCPU {id}: {}", crate::error_chain(&e));
            devices.exit.request(VmExit::Crash(why));
            return vcpu;
        }
        run(id, vcpu, devices, control, stop)
    })
}

fn run(
    id: u8,
    mut vcpu: VcpuFd,
    devices: Arc<Devices>,
    control: Arc<RunControl>,
    stop: Arc<AtomicBool>,
) -> VcpuFd {
    let exit = devices.exit.clone();
    while !exit.requested() && !stop.load(Ordering::Acquire) {
        control.park_while_paused(id, &mut vcpu);
        if exit.requested() {
            break;
        }
        let event = match vcpu.run() {
            Ok(
                exit @ (VcpuExit::IoIn(..)
                | VcpuExit::IoOut(..)
                | VcpuExit::MmioRead(..)
                | VcpuExit::MmioWrite(..)),
            ) => {
                devices.io_exit(exit);
                None
            }
            Ok(VcpuExit::Hlt) => None,
            Ok(VcpuExit::Shutdown) => Some(VmExit::Reset), // triple fault
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmExit::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reset),
                KVM_SYSTEM_EVENT_CRASH => {
                    Some(VmExit::Crash(format!("vCPU {id}: guest crash event")))
                }
                other => Some(VmExit::Crash(format!(
                    "vCPU {id}: unknown system event {other}"
                ))),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmExit::Crash(format!(
                "vCPU {id}: KVM failed to enter the guest (reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => {
                Some(VmExit::Crash(format!("vCPU {id}: KVM internal error")))
            }
            Ok(other) => Some(VmExit::Crash(format!(
                "vCPU {id}: unexpected exit {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VmExit::Crash(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        };
        if let Some(event) = event {
            exit.request(event);
        }
    }
    vcpu
}
