#!/usr/bin/env bash
# bench/balloon.sh [ROUNDS]: how fast an inflating balloon returns memory to the host —
# splitvisor + splitvisor-balloon vs QEMU's in-process virtio-balloon, both with guest memory in
# a shared memfd (QEMU: memory-backend-memfd,share=on), same kernel, initramfs, 1 GiB, 1 vCPU,
# side by side inside the nested-KVM sandbox (compare ratios: L1 itself is emulated).
# Each round: the guest fills all but ~100 MiB of its memory and frees it; the host sets the
# target to 256 MiB (a 768 MiB balloon) and samples the allocated size of the memfd
# (st_blocks of /proc/<pid>/fd/N) every 50 ms until it has dropped by 700 MiB (or 60 s pass).
# Reclaim rate = MiB returned / seconds from the request. ROUNDS (default 3) per VMM, medians.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${1:-3}"
scripts/install-deps.sh >/dev/null
scripts/guest-kit.sh >/dev/null
cargo build --release --workspace --bins --quiet

GUEST='avail=$(awk "/^MemAvailable:/ {print int(\$2 / 1024)}" /proc/meminfo)
fill=$((avail - 100))
mkdir -p /mnt && mount -t tmpfs -o size=$((fill + 16))M tmpfs /mnt
dd if=/dev/zero of=/mnt/f bs=1M count=$fill 2>/dev/null
rm /mnt/f
echo BENCH-FREED
sleep 90'
G64=$(printf '%s' "$GUEST" | base64 -w0)

L1='
memfd_kib() { fd=$(ls -l /proc/$1/fd | grep "$2" | head -n1 | awk "{print \$9}"); echo $(( $(stat -L -c %b /proc/$1/fd/$fd) / 2 )); }
now_ms() { awk "{print int(\$1 * 1000)}" /proc/uptime; }
wait_log() { i=0; while ! grep -q "$1" "$2" 2>/dev/null; do i=$((i+1)); [ $i -gt 3000 ] && return 1; sleep 0.1; done; }
measure() { # measure PID MEMFD-NAME: ms until 700 MiB are gone, and MiB gone
    before=$(memfd_kib $1 $2); t0=$(now_ms)
    "$SET_TARGET"
    while :; do
        cur=$(memfd_kib $1 $2); t=$(( $(now_ms) - t0 ))
        [ $((before - cur)) -ge $((700 * 1024)) ] && break
        [ $t -gt 60000 ] && break
        sleep 0.05
    done
    echo "$t $(( (before - cur) / 1024 ))"
}
CMD="console=ttyS0 quiet sv.cmd64=$G64"
r=0
while [ $r -lt $ROUNDS ]; do
    # ours
    splitvisor-balloon --socket /tmp/b.sock --control /tmp/b.ctl --pidfile /tmp/b.pid 2>/dev/null &
    BAL=$!
    i=0; while [ ! -f /tmp/b.pid ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    splitvisor --kernel $KIT/l2/vmlinuz --initramfs $KIT/l2/initramfs-min.cpio.gz --memory 1G \
        --cmdline "$CMD" --device vhost-user,type=balloon,socket=/tmp/b.sock </dev/null >/tmp/sv.log 2>&1 &
    VM=$!
    wait_log BENCH-FREED /tmp/sv.log
    sv_target() { splitvisor-balloon ctl --control /tmp/b.ctl set-target 256M >/dev/null; }
    SET_TARGET=sv_target
    echo "BENCH sv $(measure $VM splitvisor-guest-ram)"
    kill $VM; wait $VM; kill $BAL; wait $BAL; rm -f /tmp/b.pid
    # QEMU
    qemu-system-x86_64 -L /usr/share/qemu -L /usr/share/seabios -accel kvm -cpu host -m 1G -smp 1 -nodefaults \
        -no-user-config -display none -serial stdio -no-reboot \
        -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem \
        -device virtio-balloon-pci,romfile= -qmp tcp:127.0.0.1:4444,server=on,wait=off \
        -kernel $KIT/l2/vmlinuz -initrd $KIT/l2/initramfs-min.cpio.gz -append "$CMD" \
        </dev/null >/tmp/q.log 2>&1 &
    VM=$!
    wait_log BENCH-FREED /tmp/q.log
    q_target() {
        ( echo "{\"execute\":\"qmp_capabilities\"}"; sleep 0.2
          echo "{\"execute\":\"balloon\",\"arguments\":{\"value\":268435456}}"; sleep 0.2 ) |
            nc 127.0.0.1 4444 >/dev/null
    }
    SET_TARGET=q_target
    echo "BENCH qemu $(measure $VM memfd:mem)"
    kill $VM; wait $VM
    r=$((r+1))
done
'
out="$(target/release/sv-sandbox --timeout 2400 --host-tool qemu-system-x86_64 \
    --host-dir /usr/share/qemu --host-dir /usr/share/seabios \
    "ROUNDS=$ROUNDS; G64=$G64; $L1" 2>&1 | tee /dev/stderr | tr -d '\r' | sed -n 's/^L1| //p' | grep -a '^BENCH ' || true)"
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rate() { echo "$out" | awk -v w="$1" '$2 == w && $3 > 0 { printf "%.0f\n", $4 / ($3 / 1000) }'; }
ours="$(median $(rate sv))"
theirs="$(median $(rate qemu))"
echo "| | splitvisor-balloon | QEMU virtio-balloon (in-process) | ratio |"
echo "| --- | --- | --- | --- |"
echo "| reclaim rate, MiB/s (768 MiB balloon, median of $ROUNDS) | $ours | $theirs | $(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }') |"
echo "raw (vmm, ms, MiB):"
echo "$out"
