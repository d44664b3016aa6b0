//! Installing a process's seccomp filter with seccompiler (rust-vmm's, as Firecracker and
//! Cloud Hypervisor use it): an allow-list of system call numbers, one action for the rest.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::SeccompMode;

/// Why a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("this architecture ({0}) has no seccomp filter here")]
    Arch(&'static str),
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// The environment variable that makes [`install`] try a system call no filter allows right
/// after installing: a test's way to see the filter act (the process dies with SIGSYS under
/// `on`; lives, and the kernel logs it, under `log`).
pub const SELFTEST_ENV: &str = "SPLITVISOR_SECCOMP_SELFTEST";

/// Build the filter allowing `groups` (the rest: killed under `On`, logged under `Log`).
pub fn build(mode: SeccompMode, groups: &[&[i64]]) -> Result<Option<BpfProgram>, SeccompError> {
    let refused = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::On => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = allowed(groups)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(rules, refused, SeccompAction::Allow, arch)
        .map_err(SeccompError::Build)?;
    let program: BpfProgram = filter.try_into().map_err(SeccompError::Build)?;
    Ok(Some(program))
}

/// The system calls `groups` allow, each once.
fn allowed(groups: &[&[i64]]) -> std::collections::BTreeSet<i64> {
    groups.iter().flat_map(|g| g.iter().copied()).collect()
}

/// Install the filter allowing `groups` on every thread of this process (seccomp's TSYNC;
/// threads made later inherit it, and so do processes it starts, across `execve`). Sets
/// no_new_privs, as seccomp requires of an unprivileged caller.
pub fn install(name: &str, mode: SeccompMode, groups: &[&[i64]]) -> Result<(), SeccompError> {
    let Some(program) = build(mode, groups)? else {
        tracing::warn!("{name}: seccomp is off: every system call is allowed");
        return Ok(());
    };
    seccompiler::apply_filter_all_threads(&program).map_err(SeccompError::Install)?;
    tracing::info!(
        "{name}: seccomp {mode:?}: {} system calls allowed",
        allowed(groups).len()
    );
    if std::env::var_os(SELFTEST_ENV).is_some() {
        selftest(name);
    }
    Ok(())
}

/// Install the filter allowing `groups` on the calling thread alone, on top of the process's
/// (the kernel runs every filter a thread has; the strictest answer wins): a thread class
/// that needs less than its process (the vmm's vCPU threads) gives the rest up. The process's
/// filter must allow `seccomp` ([`crate::syscalls::STACKED_FILTER`]).
pub fn install_on_this_thread(
    name: &str,
    mode: SeccompMode,
    groups: &[&[i64]],
) -> Result<(), SeccompError> {
    let Some(program) = build(mode, groups)? else {
        return Ok(());
    };
    seccompiler::apply_filter(&program).map_err(SeccompError::Install)?;
    tracing::debug!(
        "{name}: thread filter {mode:?}: {} system calls allowed",
        allowed(groups).len()
    );
    Ok(())
}

/// Make a system call no group allows: `syslog(SYSLOG_ACTION_SIZE_BUFFER)`, which changes
/// nothing when it is let through.
fn selftest(name: &str) {
    tracing::warn!("{name}: {SELFTEST_ENV} is set: calling syslog(2), which the filter refuses");
    // SAFETY: SYSLOG_ACTION_SIZE_BUFFER (10) only returns the kernel log's size; no memory
    // is passed.
    let rc = unsafe { libc::syscall(libc::SYS_syslog, 10, std::ptr::null_mut::<u8>(), 0) };
    tracing::warn!("{name}: syslog(2) returned {rc}: the filter let it through");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls;

    #[test]
    fn every_group_builds_into_a_filter() {
        for groups in [
            &[syscalls::RUNTIME][..],
            &[syscalls::RUNTIME, syscalls::FILES, syscalls::SOCKETS],
            &[
                syscalls::RUNTIME,
                syscalls::FILES,
                syscalls::SOCKETS,
                syscalls::IO_URING,
                syscalls::PROCESSES,
                syscalls::PRIVILEGES,
            ],
        ] {
            let p = build(SeccompMode::On, groups).unwrap().unwrap();
            assert!(!p.is_empty() && p.len() < 4096, "{} instructions", p.len());
        }
        assert!(build(SeccompMode::Off, &[syscalls::RUNTIME])
            .unwrap()
            .is_none());
    }

    #[test]
    fn no_group_allows_what_a_confined_process_must_never_do() {
        let all: Vec<i64> = syscalls::ALL_GROUPS
            .iter()
            .flat_map(|g| g.iter().copied())
            .collect();
        for (nr, name) in syscalls::NEVER {
            assert!(!all.contains(nr), "{name} is in a group");
        }
    }
}
