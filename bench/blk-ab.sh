#!/usr/bin/env bash
# bench/blk-ab.sh [ROUNDS] [QUEUES] [RW] [BS] [QD]: one row of bench/blk.sh run many times,
# splitvisor-blk and qemu-storage-daemon taking turns to go first, with what the host's disk
# saw during each run (requests, merges, average request size from /sys/block/DEV/stat).
# Made for the rows whose speed follows how much the disk's scheduler merged (1 MiB sequential
# on this machine's virtio disk): it prints every run, then each backend's mean, range and
# mean merges. Defaults: 10 rounds, 4 queues, read, 1 MiB, QD8; 3 s per run.
# Environment: SV_BLK_ARGS adds arguments to splitvisor-blk (e.g. "--threads 1");
# BENCH_PAGES=2m|4k the harness's memory (default 2m; see bench/blk-backends.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${1:-10}" Q="${2:-4}" RW="${3:-read}" BS="${4:-1048576}" QD="${5:-8}"
case "$RW" in read | write | randread | randwrite) ;; *) echo "RW must be read, write, randread or randwrite, not $RW" >&2; exit 2 ;; esac
cargo build --release --workspace --bins --quiet
BIN=target/release
# shellcheck source=bench/blk-backends.sh
. bench/blk-backends.sh
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon missing: scripts/install-deps.sh" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/sv-blkab.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    restore_hugepages
    rm -rf "$WORK"
}
trap cleanup EXIT
IMG="$WORK/disk.img"
# the block device under the image's file system, whose counters each run reads
DEV="$(lsblk -no pkname "$(df --output=source "$WORK" | tail -1)" 2>/dev/null || true)"
[ -n "$DEV" ] || DEV="$(basename "$(df --output=source "$WORK" | tail -1)")"
STAT="/sys/block/$DEV/stat"
[ -r "$STAT" ] || { echo "no block device counters for $WORK ($STAT)" >&2; exit 1; }
echo "[bench] writing a 1 GiB image with random data in $WORK (disk $DEV)" >&2
dd if=/dev/urandom of="$IMG" bs=1M count=1024 status=none conv=fsync

harness_pages "$Q"
start_blk_backends "$Q"

# stat fields: 1-4 reads, read merges, read sectors, read ticks; 5-8 the same for writes
one() {
    local name="$1" before after iops
    read -r -a before <"$STAT"
    iops="$(timeout 60 "$BIN/sv-blkbench" --socket "$WORK/$name.sock" --rw "$RW" --bs "$BS" \
        --qd "$QD" --queues "$Q" --secs 3 --json "${HARNESS_ARGS[@]}" | sed -E 's/.*"iops":([0-9]+).*/\1/')"
    read -r -a after <"$STAT"
    local o=0
    case "$RW" in *write) o=4 ;; esac
    local reqs=$((after[o] - before[o])) merges=$((after[o + 1] - before[o + 1]))
    local kib=$(((after[o + 2] - before[o + 2]) / 2))
    echo "$name $iops $reqs $merges $((reqs > 0 ? kib / reqs : 0))"
}
echo "| round | backend | IOPS | disk requests | merges | average disk request KiB |"
echo "| --- | --- | --- | --- | --- | --- |"
RUNS="$WORK/runs"
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="sv qsd"; else order="qsd sv"; fi
    for b in $order; do
        one "$b" | tee -a "$RUNS" | awk -v r="$r" '{ printf "| %d | %s | %s | %s | %s | %s |\n", r, $1, $2, $3, $4, $5 }'
    done
done
echo
echo "queues=$Q $RW bs=$BS qd=$QD, $ROUNDS rounds:"
awk '{ n[$1]++; s[$1] += $2; m[$1] += $4
       if (!($1 in lo) || $2 < lo[$1]) lo[$1] = $2
       if ($2 > hi[$1]) hi[$1] = $2 }
     END { for (k in n) printf "  %-3s mean %.0f IOPS (range %d-%d), mean merges %.0f\n", k, s[k] / n[k], lo[k], hi[k], m[k] / n[k]
           if (s["qsd"] > 0) printf "  ratio of means %.2f\n", s["sv"] / s["qsd"] }' "$RUNS"
