//! Helpers for jobs that boot L2 guests: a small shell library the job scripts source, and
//! parsers for the guest kit's console markers.

/// Shell functions for job scripts (prepend to the script).
///
/// - `boot_case NAME TIMEOUT ARGS...`: run `splitvisor ARGS...` with stdin from /dev/null,
///   console and logs to `$JOB/NAME.log`, exit status (or `timeout`, or `unkillable`) to
///   `$JOB/NAME.rc`. Nothing here waits without a bound.
/// - `wait_for PATTERN FILE TIMEOUT`: poll FILE until it contains PATTERN (status 1 on timeout).
/// - `b64 TEXT`: TEXT base64-encoded on one line, for `sv.cmd64=`.
/// - `start_blk NAME DIR IMAGE ARGS...`: start `splitvisor-blk` on socket `DIR/NAME.sock`
///   (stderr to `$JOB/NAME-blk.err`), wait up to 30 s for its pidfile (else append
///   `NO-PIDFILE NAME` to `$JOB/setup.txt`); its PID is in `$BLK_PID`.
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
start_blk() {
    _name=$1 _dir=$2 _img=$3
    shift 3
    splitvisor-blk --socket "$_dir/$_name.sock" --image "$_img" --pidfile "$_dir/$_name.pid" \
        "$@" 2>"$JOB/$_name-blk.err" &
    BLK_PID=$!
    wait_for . "$_dir/$_name.pid" 30 || echo "NO-PIDFILE $_name" >>"$JOB/setup.txt"
}
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

/// Guest script lines that report `/dev/vda`'s serial and queue count, then run a verifying
/// fio job (two jobs of `size_mib` MiB each, libaio, queue depth 8) and print
/// `GUEST-FIO-STATUS <rc>` (and fio's output when it failed).
pub fn vda_fio_verify(size_mib: u32) -> String {
    format!(
        r#"
echo "GUEST-SERIAL $(cat /sys/block/vda/serial)"
echo "GUEST-QUEUES $(ls /sys/block/vda/mq | wc -l)"
echo "GUEST-SECTORS $(cat /sys/block/vda/size)"
fio --name=verify --filename=/dev/vda --size={size_mib}M --offset_increment={size_mib}M \
    --numjobs=2 --bs=4k --rw=randwrite --direct=1 --ioengine=libaio --iodepth=8 \
    --verify=crc32c --do_verify=1 --group_reporting > /tmp/fio.out 2>&1
rc=$?
echo "GUEST-FIO-STATUS $rc"
[ $rc -eq 0 ] || cat /tmp/fio.out
"#
    )
}

/// Guest script lines that put traffic on both queue pairs of a two-pair `eth0` at 10.0.2.15,
/// with iperf3 servers at 10.0.2.1 on ports 5201 and 5202: one stream from each vCPU (each
/// CPU's transmit queue is its own pair's), then two streams to the guest opened one after the
/// other by one client: net-backend's flow table gives consecutive new flows different pairs
/// (unless one's hash shares a table slot with an earlier flow's, one in thousands).
pub const NET_TRAFFIC_ON_BOTH_PAIRS: &str = r#"
taskset 1 iperf3 -c 10.0.2.1 -p 5201 -t 2 > /dev/null 2>&1 &
taskset 2 iperf3 -c 10.0.2.1 -p 5202 -t 2 > /dev/null 2>&1
wait
iperf3 -c 10.0.2.1 -p 5201 -P 2 -R -t 2 > /dev/null 2>&1
"#;

/// Checks that `script`, as `sv.cmd64=` after the usual console options, fits the x86 kernel
/// command line (2048 bytes with its NUL).
pub fn assert_fits_command_line(script: &str) {
    let line = format!("console=ttyS0 quiet sv.cmd64={}", base64(script.as_bytes()));
    assert!(
        line.len() <= 2047,
        "the command line has {} bytes",
        line.len()
    );
}

/// `data` in standard base64 (for `sv.cmd64=` built on the Rust side).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The rest of the first line of `text` that contains `KEY ` (after it, trimmed).
pub fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.split(&format!("{key} ")).nth(1))
        .map(str::trim)
}

/// [`value`], which the test needs: a panic showing `text` when it is missing.
pub fn required(text: &str, key: &str) -> String {
    value(text, key)
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
}

/// `(exit status, Mbit/s)` from a line `KEY <rc> <rate>` (the net tests' iperf3 summaries).
pub fn iperf(log: &str, key: &str) -> (String, f64) {
    let v = value(log, key).unwrap_or_default();
    let mut it = v.split_whitespace();
    let rc = it.next().unwrap_or("").to_string();
    let rate = it.next().and_then(|r| r.parse().ok()).unwrap_or(0.0);
    (rc, rate)
}

/// The largest `key=N` that `splitvisor-net`'s stats lines (SIGUSR1, exit) give for `pair`.
pub fn net_pair_counter(stderr: &str, pair: usize, key: &str) -> u64 {
    largest_counter(stderr, key, |l| l.contains(&format!("pair {pair}:")))
}

/// The largest `key=N` on any of `splitvisor-net`'s stats lines (the device-wide counters).
pub fn net_counter(stderr: &str, key: &str) -> u64 {
    largest_counter(stderr, key, |_| true)
}

fn largest_counter(stderr: &str, key: &str, keep: impl Fn(&str) -> bool) -> u64 {
    stderr
        .lines()
        .filter(|l| keep(l))
        .filter_map(|l| l.split(&format!("{key}=")).nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
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

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b"reboot -f"), "cmVib290IC1m");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn value_finds_the_first_marker() {
        assert_eq!(value("x\nKEY 12 \nKEY 3", "KEY"), Some("12"));
        assert_eq!(value("KEYS 1", "KEY"), None);
    }
}
