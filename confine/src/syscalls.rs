//! The system calls splitvisor's processes make, in named groups a binary composes into its
//! filter. Both the legacy calls and their `*at` forms are listed where glibc still uses the
//! legacy one on x86-64 (`mkdir`, `unlink`, `rename`, `access`, `readlink` …).
//!
//! `ioctl` is allowed whole: the vmm's KVM calls, the backends' tap and terminal calls and
//! std's `FIONBIO` all go through it (a per-request filter is future work, docs/security.md).

use libc::*;

/// What every process of ours needs: memory, threads, signals, time, polling, and I/O on
/// descriptors it already has.
pub const RUNTIME: &[i64] = &[
    SYS_read,
    SYS_write,
    SYS_readv,
    SYS_writev,
    SYS_pread64,
    SYS_pwrite64,
    SYS_preadv,
    SYS_pwritev,
    SYS_preadv2,
    SYS_pwritev2,
    SYS_close,
    SYS_close_range,
    SYS_fstat,
    SYS_lseek,
    SYS_dup,
    SYS_dup2,
    SYS_dup3,
    SYS_fcntl,
    SYS_ioctl,
    SYS_mmap,
    SYS_munmap,
    SYS_mprotect,
    SYS_mremap,
    SYS_madvise,
    SYS_mincore,
    SYS_msync,
    SYS_brk,
    SYS_memfd_create,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_rt_sigtimedwait,
    SYS_rt_sigsuspend,
    SYS_sigaltstack,
    SYS_tgkill,
    SYS_tkill,
    SYS_kill,
    SYS_getpid,
    SYS_gettid,
    SYS_getppid,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_getresuid,
    SYS_getresgid,
    SYS_getgroups,
    SYS_prlimit64,
    SYS_getrlimit,
    SYS_getrusage,
    SYS_sysinfo,
    SYS_uname,
    SYS_futex,
    SYS_set_robust_list,
    SYS_get_robust_list,
    SYS_rseq,
    SYS_set_tid_address,
    SYS_clone,
    SYS_clone3,
    SYS_exit,
    SYS_exit_group,
    SYS_restart_syscall,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_sched_setaffinity,
    SYS_sched_setscheduler,
    SYS_sched_getscheduler,
    SYS_sched_getparam,
    SYS_sched_setparam,
    SYS_sched_setattr,
    SYS_sched_getattr,
    SYS_getcpu,
    SYS_nanosleep,
    SYS_clock_nanosleep,
    SYS_clock_gettime,
    SYS_clock_getres,
    SYS_gettimeofday,
    SYS_time,
    SYS_poll,
    SYS_ppoll,
    SYS_select,
    SYS_pselect6,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_eventfd2,
    SYS_pipe2,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_timerfd_gettime,
    SYS_signalfd4,
    SYS_getrandom,
    SYS_prctl,
    SYS_arch_prctl,
    SYS_getcwd,
    SYS_umask,
    SYS_membarrier,
];

/// Opening, creating, renaming and removing files and directories by name; sizes and sync.
pub const FILES: &[i64] = &[
    SYS_open,
    SYS_openat,
    SYS_stat,
    SYS_lstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_statfs,
    SYS_fstatfs,
    SYS_access,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_readlink,
    SYS_readlinkat,
    SYS_getdents64,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_rmdir,
    SYS_unlink,
    SYS_unlinkat,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_link,
    SYS_linkat,
    SYS_symlink,
    SYS_symlinkat,
    SYS_chmod,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_ftruncate,
    SYS_fallocate,
    SYS_fadvise64,
    SYS_fsync,
    SYS_fdatasync,
    SYS_flock,
    SYS_copy_file_range,
    SYS_sendfile,
    SYS_utimensat,
    SYS_chdir,
];

/// Making sockets (Unix ones, and the tap's ioctl socket): create, bind, listen, accept,
/// connect. Talking over them is [`SOCKET_IO`].
pub const SOCKETS: &[i64] = &[
    SYS_socket,
    SYS_bind,
    SYS_listen,
    SYS_accept,
    SYS_accept4,
    SYS_connect,
];

/// Talking over sockets a thread already has (and socket pairs, which open nothing by
/// name): all the vmm's vCPU threads need of sockets, to drive a vhost-user backend.
pub const SOCKET_IO: &[i64] = &[
    SYS_socketpair,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_sendmmsg,
    SYS_recvmmsg,
    SYS_sendto,
    SYS_recvfrom,
    SYS_shutdown,
    SYS_getsockopt,
    SYS_setsockopt,
    SYS_getsockname,
    SYS_getpeername,
];

/// A file's metadata, by descriptor: std's `File::metadata` is `statx` on it (the vmm's vCPU
/// threads size the in-flight region a blk backend hands over this way).
pub const STAT: &[i64] = &[SYS_statx, SYS_newfstatat];

/// Installing a further, stricter filter on one thread (a thread class that needs less).
pub const STACKED_FILTER: &[i64] = &[SYS_seccomp];

/// Asynchronous I/O (the blk backend's raw images).
pub const IO_URING: &[i64] = &[
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
];

/// KVM goes through `ioctl` and `mmap` (in [`RUNTIME`]); this is what the vmm needs besides.
pub const KVM: &[i64] = &[SYS_mlock, SYS_munlock];

/// Starting and watching other processes (svctl's supervisor starts the backends and the vmm).
pub const PROCESSES: &[i64] = &[
    SYS_fork,
    SYS_vfork,
    SYS_execve,
    SYS_execveat,
    SYS_wait4,
    SYS_waitid,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_setsid,
    SYS_setpgid,
    SYS_getpgid,
    SYS_getsid,
    SYS_getpgrp,
    SYS_fchown,
    SYS_chown,
    SYS_lchown,
    SYS_fchownat,
];

/// Giving privileges up: another user and group, capabilities, landlock, a further filter.
pub const PRIVILEGES: &[i64] = &[
    SYS_setuid,
    SYS_setgid,
    SYS_setresuid,
    SYS_setresgid,
    SYS_setgroups,
    SYS_capget,
    SYS_capset,
    SYS_landlock_create_ruleset,
    SYS_landlock_add_rule,
    SYS_landlock_restrict_self,
    SYS_seccomp,
];

/// The new mount API's calls that make a *detached* mount: the vmm's private huge-page tmpfs
/// for guest RAM (`vmm::memory::backing`), made before the vmm's own filter, which forbids
/// them again. Without `move_mount` (never allowed) such a mount is attached nowhere: it is
/// only reachable through its descriptor. Only a parent whose children include the vmm (the
/// supervisor) allows them.
pub const DETACHED_MOUNT: &[i64] = &[SYS_fsopen, SYS_fsconfig, SYS_fsmount];

/// Every group (for tests).
pub const ALL_GROUPS: &[&[i64]] = &[
    RUNTIME,
    DETACHED_MOUNT,
    FILES,
    SOCKETS,
    SOCKET_IO,
    STAT,
    STACKED_FILTER,
    IO_URING,
    KVM,
    PROCESSES,
    PRIVILEGES,
];

/// System calls no splitvisor process may make, whatever its groups: debugging other
/// processes, mounting, namespaces, kernel modules and images, BPF, keys, the clock, the
/// kernel log. (`execve` is left out: only the supervisor may, through [`PROCESSES`].)
pub const NEVER: &[(i64, &str)] = &[
    (SYS_ptrace, "ptrace"),
    (SYS_process_vm_readv, "process_vm_readv"),
    (SYS_process_vm_writev, "process_vm_writev"),
    (SYS_kcmp, "kcmp"),
    (SYS_mount, "mount"),
    (SYS_move_mount, "move_mount"),
    (SYS_umount2, "umount2"),
    (SYS_pivot_root, "pivot_root"),
    (SYS_chroot, "chroot"),
    (SYS_setns, "setns"),
    (SYS_unshare, "unshare"),
    (SYS_init_module, "init_module"),
    (SYS_finit_module, "finit_module"),
    (SYS_delete_module, "delete_module"),
    (SYS_kexec_load, "kexec_load"),
    (SYS_kexec_file_load, "kexec_file_load"),
    (SYS_bpf, "bpf"),
    (SYS_perf_event_open, "perf_event_open"),
    (SYS_userfaultfd, "userfaultfd"),
    (SYS_keyctl, "keyctl"),
    (SYS_add_key, "add_key"),
    (SYS_request_key, "request_key"),
    (SYS_reboot, "reboot"),
    (SYS_swapon, "swapon"),
    (SYS_swapoff, "swapoff"),
    (SYS_acct, "acct"),
    (SYS_syslog, "syslog"),
    (SYS_personality, "personality"),
    (SYS_iopl, "iopl"),
    (SYS_ioperm, "ioperm"),
    (SYS_modify_ldt, "modify_ldt"),
    (SYS_open_by_handle_at, "open_by_handle_at"),
    (SYS_name_to_handle_at, "name_to_handle_at"),
    (SYS_settimeofday, "settimeofday"),
    (SYS_clock_settime, "clock_settime"),
    (SYS_clock_adjtime, "clock_adjtime"),
    (SYS_adjtimex, "adjtimex"),
    (SYS_sethostname, "sethostname"),
    (SYS_setdomainname, "setdomainname"),
    (SYS_quotactl, "quotactl"),
    (SYS_vhangup, "vhangup"),
    (SYS_fanotify_init, "fanotify_init"),
];
