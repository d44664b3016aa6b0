//! The scheduling policy of a backend's threads.
//!
//! A guest's kick (ioeventfd) or a tap/disk becoming ready wakes a backend worker, usually on
//! the CPU of the vCPU thread that kicked. Under the normal policy the waking worker preempts
//! that vCPU in the middle of its work (the request's reply, the next packet); the vCPU then
//! waits for a CPU, and its next interrupt waits with it. `SCHED_BATCH` keeps a woken thread
//! from preempting (it runs when the vCPU blocks or its slice ends) and is otherwise the
//! normal time-sharing policy: same nice level, same share of CPU, no privilege needed.
//! Measured in docs/benchmarks.md ("backends under `SCHED_BATCH`").

use std::io;

/// Which policy the backend's threads run under (part of every backend's configuration).
pub use api::backend::SchedPolicy;

fn raw(policy: SchedPolicy) -> libc::c_int {
    match policy {
        // `auto` starts every thread as batch; a worker that follows its queue's depth
        // switches itself (`follow_depth`)
        SchedPolicy::Batch | SchedPolicy::Auto => libc::SCHED_BATCH,
        SchedPolicy::Other => libc::SCHED_OTHER,
    }
}

thread_local! {
    /// The policy `follow_depth` last gave the calling thread (`None`: not set by it yet).
    static FOLLOWED: std::cell::Cell<Option<SchedPolicy>> = const { std::cell::Cell::new(None) };
}

/// The policy for a worker whose guest has `depth` requests outstanding on the queue it kicked:
/// at most one means the guest waits on each request (a synchronous read, an fsync, QD1), so
/// the worker its kick wakes should run at once (`other`, preempting the vCPU, which has
/// nothing left to do but halt); more means the guest keeps working while requests are in
/// flight, and the worker should not take the CPU from it (`batch`).
pub fn for_depth(depth: usize) -> SchedPolicy {
    if depth <= 1 {
        SchedPolicy::Other
    } else {
        SchedPolicy::Batch
    }
}

/// Put the calling thread under [`for_depth`]`(depth)`, with a system call only when that
/// changes its policy. Block workers under `auto` call this on each kick, before serving it.
pub fn follow_depth(depth: usize) -> io::Result<()> {
    let want = for_depth(depth);
    if FOLLOWED.get() == Some(want) {
        return Ok(());
    }
    set_policy(want)?;
    FOLLOWED.set(Some(want));
    Ok(())
}

/// Put the calling thread under `policy`; threads it starts afterwards inherit it, so
/// `main` calls this before any other thread exists.
pub fn set_policy(policy: SchedPolicy) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`, which lives across the call; pid 0 is the
    // calling thread. Both policies take priority 0 and need no privilege.
    let rc = unsafe { libc::sched_setscheduler(0, raw(policy), &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's policy, if it is one of ours.
pub fn policy() -> io::Result<Option<SchedPolicy>> {
    // SAFETY: sched_getscheduler only reads the calling thread's policy (pid 0).
    let rc = unsafe { libc::sched_getscheduler(0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok([SchedPolicy::Batch, SchedPolicy::Other]
        .into_iter()
        .find(|p| raw(*p) == rc))
}

#[cfg(test)]
mod tests {
    use super::*;

    // on threads of their own, so the test harness's threads keep their policy
    #[test]
    fn batch_is_set_and_inherited_by_new_threads() {
        std::thread::spawn(|| {
            set_policy(SchedPolicy::Batch).unwrap();
            assert_eq!(policy().unwrap(), Some(SchedPolicy::Batch));
            let child = std::thread::spawn(|| policy().unwrap()).join().unwrap();
            assert_eq!(child, Some(SchedPolicy::Batch));
            set_policy(SchedPolicy::Other).unwrap();
            assert_eq!(policy().unwrap(), Some(SchedPolicy::Other));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn auto_starts_as_batch_and_a_worker_follows_its_depth() {
        std::thread::spawn(|| {
            set_policy(SchedPolicy::Auto).unwrap();
            assert_eq!(policy().unwrap(), Some(SchedPolicy::Batch));
            for (depth, want) in [
                (1, SchedPolicy::Other),
                (0, SchedPolicy::Other),
                (2, SchedPolicy::Batch),
                (32, SchedPolicy::Batch),
                (1, SchedPolicy::Other),
            ] {
                follow_depth(depth).unwrap();
                assert_eq!(policy().unwrap(), Some(want), "depth {depth}");
            }
        })
        .join()
        .unwrap();
    }
}
