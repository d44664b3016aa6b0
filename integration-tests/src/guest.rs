//! Helpers for jobs that boot L2 guests: a small shell library the job scripts source, and
//! parsers for the guest kit's console markers.

/// Shell functions for job scripts (prepend to the script).
///
/// - `boot_case NAME TIMEOUT ARGS...`: run `splitvisor ARGS...` with stdin from /dev/null,
///   console and logs to `$JOB/NAME.log`, exit status (or `timeout`, or `unkillable`) to
///   `$JOB/NAME.rc`. Nothing here waits without a bound.
/// - `wait_for PATTERN FILE TIMEOUT`: poll FILE until it contains PATTERN (status 1 on timeout).
/// - `b64 TEXT`: TEXT base64-encoded on one line, for `sv.cmd64=`.
pub const GUEST_SH: &str = r#"
wait_for() {
    _i=0
    while ! grep -q "$1" "$2" 2>/dev/null; do
        _i=$((_i + 1))
        [ "$_i" -gt $(($3 * 10)) ] && return 1
        sleep 0.1
    done
}
finish_case() { # finish_case NAME PID TIMEOUT
    _i=0
    while kill -0 "$2" 2>/dev/null && [ "$_i" -lt $(($3 * 10)) ]; do
        sleep 0.1
        _i=$((_i + 1))
    done
    if kill -0 "$2" 2>/dev/null; then
        kill -9 "$2"
        # never wait unbounded: a process stuck in the kernel does not die even from SIGKILL
        _i=0
        while kill -0 "$2" 2>/dev/null && [ "$_i" -lt 100 ]; do
            sleep 0.1
            _i=$((_i + 1))
        done
        if kill -0 "$2" 2>/dev/null; then
            echo "SANDBOX-WARN $1: pid $2 survived SIGKILL: $(grep State /proc/$2/status)"
            echo unkillable >"$JOB/$1.rc"
        else
            wait "$2"
            echo timeout >"$JOB/$1.rc"
        fi
    else
        wait "$2"
        echo $? >"$JOB/$1.rc"
    fi
}
boot_case() {
    _name=$1 _t=$2
    shift 2
    splitvisor "$@" </dev/null >"$JOB/$_name.log" 2>&1 &
    finish_case "$_name" $! "$_t"
}
b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
L2_KERNEL=$KIT/l2/vmlinuz
L2_ELF=$KIT/l2/vmlinux
L2_INITRD=$KIT/l2/initramfs-min.cpio.gz
"#;

/// What the guest reported in `SPLITVISOR-GUEST-READY <uptime> nproc=N memtotal_kb=KB`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    pub uptime: f64,
    pub nproc: u32,
    pub memtotal_kb: u64,
}

/// The guest's ready marker in a console log.
pub fn ready(console: &str) -> Option<Ready> {
    let line = console
        .lines()
        .find_map(|l| l.split("SPLITVISOR-GUEST-READY ").nth(1))?;
    let mut words = line.split_whitespace();
    let uptime = words.next()?.parse().ok()?;
    let mut nproc = None;
    let mut memtotal_kb = None;
    for w in words {
        if let Some(v) = w.strip_prefix("nproc=") {
            nproc = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("memtotal_kb=") {
            memtotal_kb = v.parse().ok();
        }
    }
    Some(Ready {
        uptime,
        nproc: nproc?,
        memtotal_kb: memtotal_kb?,
    })
}

/// The status of the guest's `sv.cmd` (`SPLITVISOR-GUEST-EXIT <rc>`).
pub fn guest_exit(console: &str) -> Option<i32> {
    console
        .lines()
        .find_map(|l| l.split("SPLITVISOR-GUEST-EXIT ").nth(1))
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse() {
        let log = "noise\r\nSPLITVISOR-GUEST-READY 6.21 nproc=2 memtotal_kb=480416\r\n2\nSPLITVISOR-GUEST-EXIT 0\n";
        assert_eq!(
            ready(log),
            Some(Ready {
                uptime: 6.21,
                nproc: 2,
                memtotal_kb: 480416
            })
        );
        assert_eq!(guest_exit(log), Some(0));
        assert_eq!(ready("nothing here"), None);
    }
}
