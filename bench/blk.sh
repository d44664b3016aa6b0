#!/usr/bin/env bash
# bench/blk.sh [SECONDS] [ROUNDS] [disk|memory]: splitvisor-blk against qemu-storage-daemon's
# vhost-user-blk export, side by side, driven by sv-blkbench (a vhost-user frontend with no VM:
# memfd memory, split virtqueues, eventfd kicks and calls). Same 1 GiB image file, O_DIRECT on
# both backends (QSD with aio=io_uring, its fastest). Each row runs ROUNDS times (default 3),
# ours and QSD taking turns to go first so drift hits both, and reports the median of each and
# their ratio.
# `disk` (default) puts the file on the machine's disk under $TMPDIR (or /var/tmp); `memory` on
# a tmpfs mounted for the run (O_DIRECT works there since Linux 6.6), so the backends' own
# cost is measured rather than the disk's speed. A last column runs fio on the file itself
# (io_uring, O_DIRECT, one job per queue at the same depth, no vhost-user at all): what the
# storage gives without any backend, the ceiling both backends share.
# Environment: SV_BLK_ARGS adds arguments to splitvisor-blk (e.g. "--threads 1"); BENCH_QUEUES
# picks the queue counts (default "1 4"); BENCH_PAGES=2m|4k the harness's memory (default 2m,
# 2 MiB huge pages reserved for the run; see bench/blk-backends.sh).
# `bench/blk.sh vm [ROUNDS]` runs bench/blk-vm.sh instead: a guest's I/O in the sandbox,
# splitvisor + splitvisor-blk against QEMU's in-VMM virtio-blk.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "${1:-}" = vm ] && exec bench/blk-vm.sh "${@:2}"
SECS="${1:-3}"
ROUNDS="${2:-3}"
STORE="${3:-disk}"
case "$STORE" in disk | memory) ;; *) echo "storage must be disk or memory, not $STORE" >&2; exit 2 ;; esac
cargo build --release --workspace --bins --quiet
BIN=target/release
# shellcheck source=bench/blk-backends.sh
. bench/blk-backends.sh
for tool in qemu-storage-daemon fio; do
    command -v "$tool" >/dev/null || { echo "$tool missing: scripts/install-deps.sh" >&2; exit 1; }
done

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/sv-blkbench.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    restore_hugepages
    mountpoint -q "$WORK" && umount "$WORK"
    rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$STORE" = memory ]; then
    mount -t tmpfs -o size=1100m svblkbench "$WORK"
fi
IMG="$WORK/disk.img" IMG_MIB=1024
echo "[bench] writing a 1 GiB image with random data in $WORK ($STORE)" >&2
dd if=/dev/urandom of="$IMG" bs=1M count="$IMG_MIB" status=none

ROWS=(
    "randread 4096 1" "randwrite 4096 1"
    "randread 4096 32" "randwrite 4096 32"
    "read 1048576 8" "write 1048576 8"
)
echo "| queues | pattern | bs | qd/queue | splitvisor-blk IOPS | qemu-storage-daemon IOPS | ratio | fio on the file (no backend) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for Q in ${BENCH_QUEUES:-1 4}; do
    harness_pages "$Q"
    start_blk_backends "$Q"
    for row in "${ROWS[@]}"; do
        read -r rw bs qd <<<"$row"
        run() {
            timeout 60 "$BIN/sv-blkbench" --socket "$1" --rw "$rw" --bs "$bs" --qd "$qd" \
                --queues "$Q" --secs "$SECS" --json "${HARNESS_ARGS[@]}" | sed -E 's/.*"iops":([0-9]+).*/\1/'
        }
        ceiling() {
            # terse v3: field 8 is read IOPS, 49 write IOPS
            local field=8
            case "$rw" in *write) field=49 ;; esac
            fio --name=ceiling --filename="$IMG" --rw="$rw" --bs="$bs" --direct=1 \
                --size="$((IMG_MIB / Q))M" --offset_increment="$((IMG_MIB / Q))M" \
                --ioengine=io_uring --iodepth="$qd" --numjobs="$Q" --group_reporting "${FIO_MEM[@]}" \
                --time_based --runtime="$SECS" --output-format=terse --terse-version=3 |
                awk -F';' -v f="$field" '{ printf "%d", $f }'
        }
        a=() b=() c=()
        for r in $(seq "$ROUNDS"); do
            # who goes first alternates: on this disk a run's speed depends on the one before
            if [ $((r % 2)) = 1 ]; then
                a+=("$(run "$WORK/sv.sock")")
                b+=("$(run "$WORK/qsd.sock")")
            else
                b+=("$(run "$WORK/qsd.sock")")
                a+=("$(run "$WORK/sv.sock")")
            fi
            c+=("$(ceiling)")
        done
        median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
        ours="$(median "${a[@]}")"
        theirs="$(median "${b[@]}")"
        ratio="$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
        echo "| $Q | $rw | $bs | $qd | $ours | $theirs | $ratio | $(median "${c[@]}") |"
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    rm -f "$WORK"/*.sock
done
