//! Signals for backend processes, handled on one thread with `sigwait` (no async-signal-safety
//! puzzles): SIGTERM/SIGINT/SIGHUP end the process cleanly, SIGUSR1 asks for the counters,
//! SIGUSR2 asks the device to look at its backing resource again (online resize).
//!
//! [`block_signals`] must run in `main` before any other thread exists, so every thread
//! inherits the blocked mask and only the signal thread ever receives them.

use std::io;

/// What the signal thread does.
pub struct SignalActions {
    /// SIGUSR1: log the counters.
    pub on_stats: Box<dyn Fn() + Send>,
    /// SIGUSR2: reload (the block backend rereads the image size).
    pub on_reload: Box<dyn Fn() + Send>,
    /// SIGTERM/SIGINT/SIGHUP: last words (flush, remove socket and pidfile) before exit(0).
    pub on_terminate: Box<dyn Fn() + Send>,
}

const HANDLED: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own; the signal numbers
    // are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Block the handled signals in the calling thread (and every thread it starts afterwards).
pub fn block_signals() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: pthread_sigmask reads `set` and changes only this thread's signal mask.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Start the thread that waits for the handled signals and acts on them.
pub fn spawn_signal_thread(actions: SignalActions) -> io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let set = handled_set();
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait reads `set` and writes the received signal number into `sig`.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc != 0 {
                continue;
            }
            if sig == libc::SIGUSR1 {
                (actions.on_stats)();
            } else if sig == libc::SIGUSR2 {
                (actions.on_reload)();
            } else {
                tracing::info!("signal {sig}: exiting");
                (actions.on_terminate)();
                std::process::exit(0);
            }
        })
        .map(|_| ())
}
