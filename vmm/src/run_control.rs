//! Pausing and resuming the vCPUs (the API's `vm.pause`/`vm.resume`).
//!
//! A pause asks every vCPU thread to park: the thread is kicked out of `KVM_RUN` with the
//! kick signal and waits on a condition variable until it is resumed or the VM stops. Once
//! all have parked the KVM clock is saved, and a resume sets it back before the vCPUs run
//! again, so the guest's kvmclock time does not advance while it is paused (as in Cloud
//! Hypervisor). Backends are not told: their rings simply see no new requests.
//!
//! While paused, the vCPUs can be handed a job ([`RunControl::run_on_parked`]): each parked
//! thread runs it once on its own `VcpuFd` (which only it holds) and the caller gets the
//! results in vCPU order — how a snapshot reads every vCPU's state.

use std::any::Any;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_clock_data;
use kvm_ioctls::{VcpuFd, VmFd};

use crate::exit::ExitHandle;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("the VM is stopping")]
    Stopping,
    #[error("{0} vCPU(s) did not stop within {1:?}")]
    Timeout(usize, Duration),
    #[error("KVM: cannot {0}: {1}")]
    Clock(&'static str, String),
    #[error("{0} vCPU(s) did not finish their job within {1:?}")]
    JobTimeout(usize, Duration),
    #[error("a snapshot is being taken: try again once it is written")]
    Snapshotting,
}

/// What each parked vCPU thread runs once (its id, its fd).
type JobFn = dyn Fn(u8, &mut VcpuFd) -> Box<dyn Any + Send> + Send + Sync;

struct Job {
    /// Which job this is: a thread that finishes a job run_on_parked gave up on does not
    /// count for a later one.
    generation: u64,
    f: Arc<JobFn>,
    results: Vec<(u8, Box<dyn Any + Send>)>,
}

#[derive(Default)]
struct State {
    paused: bool,
    parked: usize,
    /// pthread ids of the running vCPU threads (for the kick signal).
    threads: Vec<libc::pthread_t>,
    clock: Option<kvm_clock_data>,
    /// When the clock was frozen (ns since the Unix epoch).
    frozen_at_unix_ns: u64,
    job: Option<Job>,
    jobs_started: u64,
    /// A snapshot is being taken: pause, resume and another snapshot wait for it.
    snapshotting: bool,
}

pub struct RunControl {
    vm: Arc<VmFd>,
    exit: Arc<ExitHandle>,
    state: Mutex<State>,
    cond: Condvar,
}

const PAUSE_LIMIT: Duration = Duration::from_secs(2);
/// How long the parked vCPUs have for a job (reading a vCPU's state takes milliseconds).
const JOB_LIMIT: Duration = Duration::from_secs(30);

impl RunControl {
    pub fn new(vm: Arc<VmFd>, exit: Arc<ExitHandle>) -> RunControl {
        RunControl {
            vm,
            exit,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The vCPU threads now running (set at start and after each in-place reboot).
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        self.lock().threads = threads;
    }

    /// A vCPU thread added while the guest runs (never while paused: `vcpu_hotplug.rs`).
    pub fn add_thread(&self, thread: libc::pthread_t) {
        self.lock().threads.push(thread);
    }

    /// A vCPU thread about to end (before it does: a pause must not wait for it).
    pub fn remove_thread(&self, thread: libc::pthread_t) {
        self.lock().threads.retain(|&t| t != thread);
    }

    pub fn paused(&self) -> bool {
        self.lock().paused
    }

    /// Called by vCPU thread `id` before each `KVM_RUN`: while the VM is paused, wait (and
    /// run, once, each job handed to the parked vCPUs).
    pub fn park_while_paused(&self, id: u8, vcpu: &mut VcpuFd) {
        let mut st = self.lock();
        if !st.paused {
            return;
        }
        st.parked += 1;
        self.cond.notify_all();
        while st.paused && !self.exit.requested() {
            let pending = st
                .job
                .as_ref()
                .filter(|j| j.results.iter().all(|(done, _)| *done != id))
                .map(|j| (j.generation, j.f.clone()));
            if let Some((generation, f)) = pending {
                drop(st);
                let result = f(id, vcpu);
                st = self.lock();
                if let Some(job) = st.job.as_mut().filter(|j| j.generation == generation) {
                    job.results.push((id, result));
                }
                self.cond.notify_all();
                continue;
            }
            // bounded waits: a stop request (which does not notify us) is seen within 50 ms
            st = self
                .cond
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.parked -= 1;
    }

    /// Stop every vCPU (bounded) and freeze the guest's clock.
    pub fn pause(&self) -> Result<(), RunError> {
        self.pause_as(false)
    }

    /// The pause a snapshot makes (the only one allowed while it is being taken).
    pub fn pause_for_snapshot(&self) -> Result<(), RunError> {
        self.pause_as(true)
    }

    fn pause_as(&self, snapshot: bool) -> Result<(), RunError> {
        if self.exit.requested() {
            return Err(RunError::Stopping);
        }
        let mut st = self.lock();
        if st.snapshotting && !snapshot {
            return Err(RunError::Snapshotting);
        }
        if st.paused {
            return Err(RunError::AlreadyPaused);
        }
        st.paused = true;
        let start = Instant::now();
        while st.parked < st.threads.len() {
            if start.elapsed() > PAUSE_LIMIT || self.exit.requested() {
                let missing = st.threads.len() - st.parked;
                st.paused = false;
                self.cond.notify_all();
                return Err(RunError::Timeout(missing, PAUSE_LIMIT));
            }
            for &t in &st.threads {
                // SAFETY: pthread_kill with a thread id of a vCPU thread that is alive (the
                // threads are only replaced under this lock) and our no-op kick signal.
                unsafe { libc::pthread_kill(t, crate::signals::vcpu_kick_signal()) };
            }
            st = self
                .cond
                .wait_timeout(st, Duration::from_millis(5))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        match self.vm.get_clock() {
            Ok(clock) => {
                st.clock = Some(clock);
                st.frozen_at_unix_ns = crate::snapshot::platform::unix_ns();
            }
            Err(e) => tracing::warn!("cannot save the KVM clock on pause: {e}"),
        }
        tracing::info!("VM paused");
        Ok(())
    }

    /// Begin paused (a VM restored with `--paused`), its clock frozen at `clock`: the vCPUs
    /// park before they first run, and `vm.resume` starts them.
    pub fn start_paused(&self, clock: kvm_clock_data) {
        let mut st = self.lock();
        st.paused = true;
        st.clock = Some(clock);
        st.frozen_at_unix_ns = crate::snapshot::platform::unix_ns();
    }

    /// The kvmclock as the pause froze it and when (ns since the Unix epoch); `None` while
    /// running.
    pub fn paused_clock(&self) -> Option<(kvm_clock_data, u64)> {
        let st = self.lock();
        let clock = st.paused.then_some(st.clock).flatten()?;
        Some((clock, st.frozen_at_unix_ns))
    }

    /// Run `f` once on every vCPU (paused: each parked thread runs it on its own fd); the
    /// results in vCPU order.
    pub fn run_on_parked<R: Send + 'static>(
        &self,
        f: impl Fn(u8, &mut VcpuFd) -> R + Send + Sync + 'static,
    ) -> Result<Vec<R>, RunError> {
        let mut st = self.lock();
        if !st.paused {
            return Err(RunError::NotPaused);
        }
        let boxed: Arc<JobFn> = Arc::new(move |id, vcpu| Box::new(f(id, vcpu)));
        st.jobs_started += 1;
        st.job = Some(Job {
            generation: st.jobs_started,
            f: boxed,
            results: Vec::new(),
        });
        self.cond.notify_all();
        let start = Instant::now();
        loop {
            let done = st.job.as_ref().map_or(0, |j| j.results.len());
            if done >= st.threads.len() {
                break;
            }
            if start.elapsed() > JOB_LIMIT || self.exit.requested() {
                let missing = st.threads.len() - done;
                st.job = None;
                return Err(RunError::JobTimeout(missing, JOB_LIMIT));
            }
            st = self
                .cond
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut results = st.job.take().map(|j| j.results).unwrap_or_default();
        results.sort_by_key(|(id, _)| *id);
        Ok(results
            .into_iter()
            .filter_map(|(_, r)| r.downcast::<R>().ok().map(|r| *r))
            .collect())
    }

    pub fn resume(&self) -> Result<(), RunError> {
        self.resume_as(false)
    }

    /// The resume that ends a snapshot of a running VM.
    pub fn resume_after_snapshot(&self) -> Result<(), RunError> {
        self.resume_as(true)
    }

    /// Mark a snapshot as being taken (one at a time; pause and resume are refused
    /// meanwhile) until [`RunControl::end_snapshot`].
    pub fn begin_snapshot(&self) -> Result<(), RunError> {
        let mut st = self.lock();
        if st.snapshotting {
            return Err(RunError::Snapshotting);
        }
        st.snapshotting = true;
        Ok(())
    }

    pub fn end_snapshot(&self) {
        self.lock().snapshotting = false;
    }

    fn resume_as(&self, snapshot: bool) -> Result<(), RunError> {
        let mut st = self.lock();
        if st.snapshotting && !snapshot {
            return Err(RunError::Snapshotting);
        }
        if !st.paused {
            return Err(RunError::NotPaused);
        }
        if let Some(mut clock) = st.clock.take() {
            // only the time itself is restored; the flags KVM reported are not input flags
            clock.flags = 0;
            self.vm
                .set_clock(&clock)
                .map_err(|e| RunError::Clock("restore the clock", e.to_string()))?;
        }
        st.paused = false;
        self.cond.notify_all();
        tracing::info!("VM resumed");
        Ok(())
    }
}
