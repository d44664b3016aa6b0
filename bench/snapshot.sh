#!/usr/bin/env bash
# bench/snapshot.sh [ROUNDS]: time to snapshot and to restore a 1 GiB, 1-vCPU guest with half
# of its memory touched, and the snapshot's size — splitvisor (`vm.pause` + `vm.snapshot`,
# `splitvisor --restore`) vs QEMU (`stop` + `migrate "exec:cat > FILE"`, `-incoming
# "exec:cat FILE"`), same kernel and initramfs, side by side inside the nested-KVM sandbox
# (compare ratios: L1 itself is emulated).
# The guest fills a 512 MiB tmpfs with incompressible data (a 64 MiB random block, 8 times:
# neither VMM looks for repeated pages, both skip zero pages), prints a marker and sleeps.
# Snapshot, of the running guest: from the request until the state is on disk (splitvisor's
# `vm.snapshot` pauses, writes and fsyncs, and resumes; QEMU's `migrate` pre-copies, stops the
# guest at the end, and its file is synced after the migration completes — its time includes
# that `sync`). Restore: from the process start until its API reports the VM running
# (`vm.info` state Running; QEMU: `query-status` running, polled over QMP, which QEMU reaches
# by itself since the saved guest was running). Medians of ROUNDS (default 3); polls are
# bounded (10 min).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${1:-3}"
scripts/install-deps.sh >/dev/null
scripts/guest-kit.sh >/dev/null
cargo build --release --workspace --bins --quiet

GUEST='mkdir -p /mnt && mount -t tmpfs -o size=600M tmpfs /mnt
dd if=/dev/urandom of=/mnt/block bs=1M count=64 2>/dev/null
for i in 1 2 3 4 5 6 7 8; do cat /mnt/block; done > /mnt/f
rm /mnt/block
echo BENCH-TOUCHED
sleep 100000'
G64=$(printf '%s' "$GUEST" | base64 -w0)

L1='
now_ms() { awk "{print int(\$1 * 1000)}" /proc/uptime; }
wait_log() { i=0; while ! grep -q "$1" "$2" 2>/dev/null; do i=$((i+1)); [ $i -gt 6000 ] && return 1; sleep 0.1; done; }
api() { curl -sS --max-time 600 --unix-socket $1 -X $2 -H "Content-Type: application/json" ${4:+-d "$4"} "http://localhost/api/v1/$3"; }
qmp() { # qmp PORT COMMAND-JSON: the reply lines
    ( echo "{\"execute\":\"qmp_capabilities\"}"; echo "$2"; sleep 0.1 ) | nc 127.0.0.1 $1 2>/dev/null
}
until_ok() { # until_ok COMMAND...: run it every 20 ms until it succeeds (at most 10 min)
    i=0; while ! "$@"; do i=$((i+1)); [ $i -gt 30000 ] && return 1; sleep 0.02; done
}
sv_running() { api $W/api2.sock GET vm.info 2>/dev/null | grep -q "\"state\":\"running\""; }
q_migrated() { qmp 4444 "{\"execute\":\"query-migrate\"}" | grep -q "\"status\": \"completed\""; }
q_running() { qmp 4445 "{\"execute\":\"query-status\"}" | grep -q "\"status\": \"running\""; }
kib() { du -sk "$1" | cut -f1; }
CMD="console=ttyS0 quiet sv.cmd64=$G64"
QEMU="qemu-system-x86_64 -L /usr/share/qemu -L /usr/share/seabios -accel kvm -cpu host -m 1G -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -kernel $KIT/l2/vmlinuz -initrd $KIT/l2/initramfs-min.cpio.gz"
W=/tmp/snapbench
r=0
while [ $r -lt $ROUNDS ]; do
    rm -rf $W; mkdir -p $W
    # ours
    splitvisor --kernel $KIT/l2/vmlinuz --initramfs $KIT/l2/initramfs-min.cpio.gz --memory 1G \
        --cmdline "$CMD" --api-socket $W/api.sock </dev/null >$W/sv.log 2>&1 &
    VM=$!
    wait_log BENCH-TOUCHED $W/sv.log
    sleep 1
    t0=$(now_ms)
    api $W/api.sock PUT vm.snapshot "{\"destination_url\":\"file://$W/snap\"}" >/dev/null
    snap=$(( $(now_ms) - t0 ))
    size=$(kib $W/snap)
    kill $VM; wait $VM 2>/dev/null || true
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(now_ms)
    splitvisor --restore $W/snap --api-socket $W/api2.sock </dev/null >$W/sv2.log 2>&1 &
    VM=$!
    until_ok sv_running
    restore=$(( $(now_ms) - t0 ))
    kill $VM; wait $VM 2>/dev/null || true
    echo "BENCH sv $snap $restore $size"
    rm -rf $W/snap
    # QEMU
    $QEMU -append "$CMD" -qmp tcp:127.0.0.1:4444,server=on,wait=off </dev/null >$W/q.log 2>&1 &
    VM=$!
    wait_log BENCH-TOUCHED $W/q.log
    sleep 1
    t0=$(now_ms)
    qmp 4444 "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > $W/qemu.state\"}}" >/dev/null
    until_ok q_migrated
    sync
    snap=$(( $(now_ms) - t0 ))
    size=$(kib $W/qemu.state)
    kill $VM; wait $VM 2>/dev/null || true
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(now_ms)
    $QEMU -append "$CMD" -qmp tcp:127.0.0.1:4445,server=on,wait=off -incoming "exec:cat $W/qemu.state" </dev/null >$W/q2.log 2>&1 &
    VM=$!
    until_ok q_running
    restore=$(( $(now_ms) - t0 ))
    kill $VM; wait $VM 2>/dev/null || true
    echo "BENCH qemu $snap $restore $size"
    r=$((r+1))
done
rm -rf $W
'
out="$(target/release/sv-sandbox --timeout 3000 --host-tool qemu-system-x86_64 --host-tool curl \
    --host-dir /usr/share/qemu --host-dir /usr/share/seabios \
    "ROUNDS=$ROUNDS; G64=$G64; $L1" 2>&1 | tee /dev/stderr | tr -d '\r' | sed -n 's/^L1| //p' | grep -a '^BENCH ' || true)"
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
col() { echo "$out" | awk -v w="$1" -v c="$2" '$2 == w { print $c }'; }
row() { # row LABEL COLUMN
    local a b
    a="$(median $(col sv "$2"))"; b="$(median $(col qemu "$2"))"
    echo "| $1 | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }') |"
}
echo "| 1 GiB guest, 512 MiB touched (median of $ROUNDS) | splitvisor | QEMU | ratio |"
echo "| --- | --- | --- | --- |"
row "snapshot, ms (pause to on disk)" 3
row "restore, ms (start to running)" 4
row "snapshot size, KiB on disk" 5
echo "raw (vmm, snapshot ms, restore ms, KiB):"
echo "$out"
