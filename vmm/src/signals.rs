//! SIGTERM, SIGINT and SIGHUP stop the VM: they are blocked in every thread and taken by one
//! thread with sigwait, which turns them into a [`VmExit::Signal`].

use std::sync::Arc;

use crate::exit::{ExitHandle, VmExit};

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Block the stop signals in the calling thread (and every thread it creates afterwards).
/// Call before spawning any thread.
pub fn block() -> std::io::Result<()> {
    let set = stop_set();
    // SAFETY: pthread_sigmask with a valid, initialised set and no old-set pointer.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(std::io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that kicks a vCPU thread out of `KVM_RUN` (its handler does nothing: the
/// interrupted `KVM_RUN` returns EINTR and the thread sees that the VM is stopping).
pub fn vcpu_kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

pub fn install_vcpu_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(vcpu_kick_signal(), kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Start the thread that turns a stop signal into a VM exit.
pub fn spawn_handler(exit: Arc<ExitHandle>) -> std::io::Result<()> {
    crate::threads::builder("signals")
        .spawn(move || {
            let set = stop_set();
            let mut sig: libc::c_int = 0;
            // a VM that reboots in place keeps running, so every signal is taken, not just one
            loop {
                // SAFETY: sigwait on a valid set, writing the signal number into our local.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    break;
                }
                exit.request(VmExit::Signal(sig));
            }
        })
        .map(|_| ())
}
