#!/usr/bin/env bash
# bench/migrate.sh [ROUNDS]: live migration of a 1 GiB, 1-vCPU guest with a disk, idle and
# busy, over TCP on L1's loopback — splitvisor (`vm.send-migration` to `splitvisor
# --incoming`, the disk's splitvisor-blk handed over) vs QEMU (`-accel kvm`, vhost-user-blk
# on qemu-storage-daemon, one per side over the same raw image, `migrate` to `-incoming
# tcp:`), same kernel and initramfs, side by side inside the nested-KVM sandbox (compare
# ratios: L1 itself is emulated). Also splitvisor's local migration (the memfd handed over).
# The guest fills 512 MiB of tmpfs with incompressible data; "busy" then rewrites an 8 MiB
# block every 0.2 s (at most 40 MB/s) while it migrates. Total: from the request until the
# destination runs (ours: the answer to vm.send-migration; QEMU: query-migrate "completed",
# polled every 50 ms). Downtime: as each VMM reports it (ours: `downtime_ms`, from the pause
# to the destination's "running"; QEMU: query-migrate's `downtime`). The guest's own view: a
# loop reads /proc/uptime (10 ms steps) and prints every gap over 30 ms, and the largest the
# destination prints is shown for splitvisor only — QEMU carries the guest's kvmclock over
# as it stopped, so a guest under QEMU cannot see the pause on its own clock (its wall clock
# falls behind instead; ours is moved on by the time the VM stood still).
# Both aim at a 300 ms pause (QEMU's default downtime-limit, ours `downtime_ms`); QEMU gets at
# most 300 s to converge. Medians of ROUNDS (default 1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${1:-1}"
scripts/install-deps.sh >/dev/null
scripts/guest-kit.sh >/dev/null
cargo build --release --workspace --bins --quiet

GUEST='mkdir -p /mnt && mount -t tmpfs -o size=600M tmpfs /mnt
dd if=/dev/urandom of=/mnt/block bs=1M count=64 2>/dev/null
for i in 1 2 3 4 5 6 7 8; do cat /mnt/block; done > /mnt/f
head -c 8388608 /mnt/block > /mnt/b8; rm /mnt/block
grep -q busy /proc/cmdline && while :; do cat /mnt/b8 > /mnt/busy; sleep 0.2; done &
p=0
while :; do read u r < /proc/uptime; t=${u%.*}${u#*.}
[ $p -gt 0 ] && [ $((t - p)) -gt 3 ] && echo "GAP $(((t - p) * 10))"
[ $p = 0 ] && echo BENCH-READY; p=$t; done'
G64=$(printf '%s' "$GUEST" | base64 -w0)

L1='
now_ms() { awk "{print int(\$1 * 1000)}" /proc/uptime; }
wait_log() { i=0; while ! grep -q "$1" "$2" 2>/dev/null; do i=$((i+1)); [ $i -gt 6000 ] && return 1; sleep 0.1; done; }
api() { curl -sS --max-time 600 --unix-socket $1 -X $2 -H "Content-Type: application/json" ${4:+-d "$4"} "http://localhost/api/v1/$3"; }
qmp() { ( echo "{\"execute\":\"qmp_capabilities\"}"; echo "$2"; sleep 0.1 ) | nc 127.0.0.1 $1 2>/dev/null; }
max_gap() { grep -a "^GAP" "$1" | awk "{ if (\$2 > m) m = \$2 } END { print m + 0 }"; }
W=/tmp/migbench
rm -rf $W; mkdir -p $W
truncate -s 256M $W/disk.raw
KERNEL="-kernel $KIT/l2/vmlinuz -initrd $KIT/l2/initramfs-min.cpio.gz"
QEMU="qemu-system-x86_64 -L /usr/share/qemu -L /usr/share/seabios -accel kvm -cpu host -m 1G -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem"
qsd() { # qsd SOCKET: a qemu-storage-daemon export of the disk
    qemu-storage-daemon --blockdev driver=file,node-name=f,filename=$W/disk.raw,locking=off,cache.direct=off \
        --export type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$1,writable=on &
    QSD=$!
    i=0; while [ ! -S $1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
}
ours() { # ours MODE(idle|busy) URL(tcp|unix) LOCAL(true|false)
    splitvisor-blk --socket $W/blk.sock --image $W/disk.raw --format raw 2>$W/blk.err &
    BLK=$!
    i=0; while [ ! -S $W/blk.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    splitvisor --kernel $KIT/l2/vmlinuz --initramfs $KIT/l2/initramfs-min.cpio.gz --memory 1G \
        --cmdline "console=ttyS0 quiet $1 sv.cmd64=$G64" --api-socket $W/a.sock \
        --device vhost-user,type=blk,socket=$W/blk.sock </dev/null >$W/a.log 2>$W/a.err &
    A=$!
    wait_log BENCH-READY $W/a.log
    sleep 2
    if [ "$2" = unix ]; then U=unix:$W/mig.sock; else U=tcp:127.0.0.1:7200; fi
    splitvisor --incoming $U --api-socket $W/b.sock </dev/null >$W/b.log 2>$W/b.err &
    B=$!
    sleep 3 # as QEMU's destination gets: listening before the clock starts
    t0=$(now_ms)
    out=$(api $W/a.sock PUT vm.send-migration "{\"destination_url\":\"$U\",\"local\":$3,\"downtime_ms\":300}")
    total=$(( $(now_ms) - t0 ))
    sleep 3
    echo "BENCH sv-$2-$1 $total $(max_gap $W/b.log) $out"
    kill -9 $B $A $BLK 2>/dev/null; wait $B $A $BLK 2>/dev/null || true
    rm -f $W/*.sock
}
theirs() { # theirs MODE
    qsd $W/q1.sock; Q1=$QSD
    qsd $W/q2.sock; Q2=$QSD
    $QEMU $KERNEL -append "console=ttyS0 quiet $1 sv.cmd64=$G64" -qmp tcp:127.0.0.1:4444,server=on,wait=off \
        -chardev socket,id=c,path=$W/q1.sock -device vhost-user-blk-pci,chardev=c </dev/null >$W/qa.log 2>&1 &
    A=$!
    wait_log BENCH-READY $W/qa.log
    sleep 2
    $QEMU $KERNEL -append "console=ttyS0 quiet $1 sv.cmd64=$G64" -qmp tcp:127.0.0.1:4445,server=on,wait=off \
        -chardev socket,id=c,path=$W/q2.sock -device vhost-user-blk-pci,chardev=c -incoming tcp:127.0.0.1:7201 </dev/null >$W/qb.log 2>&1 &
    B=$!
    sleep 3
    t0=$(now_ms)
    qmp 4444 "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:127.0.0.1:7201\"}}" >/dev/null
    i=0; st=""
    while [ $i -lt 6000 ]; do
        st=$(qmp 4444 "{\"execute\":\"query-migrate\"}" | tr -d "\n" | grep -o "\"status\": \"[a-z-]*\"" | tail -n1)
        case "$st" in *completed*|*failed*|*cancelled*) break;; esac
        sleep 0.05; i=$((i+1))
    done
    total=$(( $(now_ms) - t0 ))
    info=$(qmp 4444 "{\"execute\":\"query-migrate\"}" | tr -d "\n" | grep -o "\"downtime\": [0-9]*\|\"total-time\": [0-9]*\|\"dirty-sync-count\": [0-9]*\|\"transferred\": [0-9]*" | tr "\n" " ")
    case "$st" in *completed*) ;; *) qmp 4444 "{\"execute\":\"migrate_cancel\"}" >/dev/null; total=0;; esac
    sleep 3
    echo "BENCH qemu-tcp-$1 $total $(max_gap $W/qb.log) $st $info"
    kill -9 $B $A $Q1 $Q2 2>/dev/null; wait $B $A $Q1 $Q2 2>/dev/null || true
    rm -f $W/*.sock
}
r=0
while [ $r -lt $ROUNDS ]; do
    for mode in idle busy; do
        ours $mode tcp false
        theirs $mode
        ours $mode unix true
    done
    r=$((r+1))
done
rm -rf $W
'
out="$(target/release/sv-sandbox --timeout 5400 --host-tool qemu-system-x86_64 --host-tool curl \
    --host-tool qemu-storage-daemon --host-dir /usr/share/qemu --host-dir /usr/share/seabios \
    "ROUNDS=$ROUNDS; G64=$G64; $L1" 2>&1 | tee /dev/stderr | tr -d '\r' | sed -n 's/^L1| //p' | grep -a '^BENCH ' || true)"
. bench/stats.sh
col() { echo "$out" | awk -v w="$1" -v c="$2" '$2 == w { print $c }'; }
echo "| 1 GiB guest, 512 MiB touched (median of $ROUNDS) | splitvisor | QEMU | ratio | splitvisor local |"
echo "| --- | --- | --- | --- | --- |"
# the downtime each VMM reports: ours from its JSON, QEMU's from query-migrate
down() { echo "$out" | awk -v w="$1" '$2 == w { if (match($0, /"?downtime(_ms)?"?: ?[0-9]+/)) { v = substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", v); print v } }'; }
for mode in idle busy; do
    a="$(median $(col sv-tcp-$mode 3))"; b="$(median $(col qemu-tcp-$mode 3))"
    echo "| $mode: total, ms | $a | $b | $(ratio "$a" "$b") | $(median $(col sv-unix-$mode 3)) |"
    a="$(median $(down sv-tcp-$mode))"; b="$(median $(down qemu-tcp-$mode))"
    echo "| $mode: downtime (as the VMM reports it), ms | $a | $b | $(ratio "$a" "$b") | $(median $(down sv-unix-$mode)) |"
    echo "| $mode: largest pause the guest saw, ms | $(median $(col sv-tcp-$mode 4)) | — | | $(median $(col sv-unix-$mode 4)) |"
done
echo "raw (who, total ms, largest gap ms, report):"
echo "$out"
