#!/usr/bin/env bash
# bench/blk-vm.sh [ROUNDS] (also `bench/blk.sh vm [ROUNDS]`): a guest's disk I/O through
# splitvisor + splitvisor-blk against QEMU's in-VMM virtio-blk, side by side in one sandbox L1.
#
# The same guest kernel and initramfs, 1 vCPU, 512 MiB; the disk is a 256 MiB raw image with
# random data in L1's /tmp, a tmpfs: memory, no disk in the way (L1's Linux 6.1 has no O_DIRECT
# on tmpfs, so the backends do buffered I/O, which there is a copy to or from tmpfs pages).
# Configurations: splitvisor-blk with its defaults ("sv"), splitvisor-blk with SV_BLK_B_ARGS
# ("sv-b", default `--sched batch`, every backend's policy before issue 30), optionally
# splitvisor-blk with SV_BLK_C_ARGS ("sv-c", when set), and QEMU's built-in virtio-blk
# (`aio=io_uring`: the device runs in QEMU's own I/O thread, no second process). In the guest
# fio runs each row at queue depth 1 with O_DIRECT (libaio), 4 s, twice per boot: 4 KiB random
# reads and writes (IOPS and the mean latency per request, µs), 1 MiB sequential reads and
# writes (MB/s). Then the guest stays idle while L1 reads the CPU time the VMM and the backend
# use in 10 s doing nothing (ms of CPU per s). ROUNDS (default 3) boots per configuration,
# taking turns (the order rotating each round) so that L1's drift hits all of them.
# Reported: the median and range of the 2 x ROUNDS samples per row, and the ratios. Compare
# ratios only: L1 itself is emulated.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${1:-3}"
SV_BLK_B_ARGS="${SV_BLK_B_ARGS:---sched batch}"
SV_BLK_C_ARGS="${SV_BLK_C_ARGS:-}"
scripts/install-deps.sh >/dev/null
cargo build --release --workspace --bins --quiet
scripts/guest-kit.sh >/dev/null
BIN=target/release

# shellcheck source=bench/stats.sh
. bench/stats.sh

# in the guest: each row twice, then idle while L1 measures
guest="$(cat <<'EOF'
row() { # NAME RW BS
    fio --name=b --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=1 --rw=$2 --bs=$3 \
        --time_based --runtime=4 --output-format=terse > /tmp/f 2>&1 || { cat /tmp/f; return; }
    case $2 in
        *read) awk -F';' -v n=$1 '{ printf "BENCH %s %d %.1f %.1f\n", n, $8, $40, $7 / 1000 }' /tmp/f ;;
        *) awk -F';' -v n=$1 '{ printf "BENCH %s %d %.1f %.1f\n", n, $49, $81, $48 / 1000 }' /tmp/f ;;
    esac
}
for r in 1 2; do
    row rr4k randread 4k; row rw4k randwrite 4k; row r1m read 1m; row w1m write 1m
done
echo BENCH-IDLE
sleep 13
EOF
)"

l1="$(cat <<'EOF'
G64=$(printf '%s' "$GUEST" | base64 | tr -d '\n')
CMD="console=ttyS0 quiet sv.cmd64=$G64"
mkdir -p /tmp/d
dd if=/dev/urandom of=/tmp/d/disk.img bs=1M count=256 2>/dev/null
cpu() { # CPU time of the PIDs, in ticks (utime + stime)
    t=0; for p in "$@"; do t=$((t + $(cut -d' ' -f14,15 /proc/$p/stat | tr ' ' '+'))); done; echo $t
}
run() { # run sv|sv-b|sv-c|qemu BOOT
    cfg=$1 log=/tmp/$1-$2.log BLK=""
    if [ $cfg = qemu ]; then
        qemu-system-x86_64 -L /usr/share/qemu -L /usr/share/seabios -accel kvm -cpu host -smp 1 -m 512M \
            -nodefaults -no-user-config -display none -serial stdio -no-reboot \
            -kernel $KIT/l2/vmlinuz -initrd $KIT/l2/initramfs.cpio.gz -append "$CMD" \
            -drive file=/tmp/d/disk.img,if=none,id=d0,format=raw,aio=io_uring \
            -device virtio-blk-pci,drive=d0 </dev/null >$log 2>&1 &
        VM=$!
    else
        args=""; [ $cfg = sv-b ] && args="$BARGS"; [ $cfg = sv-c ] && args="$CARGS"
        rm -f /tmp/b.pid
        splitvisor-blk --socket /tmp/b.sock --image /tmp/d/disk.img --pidfile /tmp/b.pid $args 2>/tmp/b.err &
        BLK=$!
        i=0; while [ ! -f /tmp/b.pid ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
        splitvisor --kernel $KIT/l2/vmlinuz --initramfs $KIT/l2/initramfs.cpio.gz --cpus 1 --memory 512M \
            --cmdline "$CMD" --device vhost-user,type=blk,socket=/tmp/b.sock </dev/null >$log 2>&1 &
        VM=$!
    fi
    i=0; until grep -q BENCH-IDLE $log 2>/dev/null || ! kill -0 $VM 2>/dev/null || [ $i -ge 3000 ]; do
        sleep 0.1; i=$((i+1))
    done
    if grep -q BENCH-IDLE $log; then
        sleep 1
        a=$(cpu $VM $BLK); sleep 10; b=$(cpu $VM $BLK)
        echo "BENCH idle $(( (b - a) * 1000 / 100 / 10 ))" >> $log.idle
    else
        echo "$cfg FAILED"; tail -20 $log
    fi
    i=0; while kill -0 $VM 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
    kill -9 $VM 2>/dev/null; wait $VM
    [ -n "$BLK" ] && { kill $BLK; wait $BLK; }
    cat $log $log.idle | tr -d '\r' | grep '^BENCH ' | sed "s/^BENCH /$cfg /"
}
boot=1
while [ $boot -le $ROUNDS ]; do
    C=""; [ -n "$CARGS" ] && C=sv-c
    case $((boot % 3)) in
        1) order="sv sv-b $C qemu" ;; 2) order="sv-b $C qemu sv" ;; 0) order="qemu sv sv-b $C" ;;
    esac
    for c in $order; do run $c $boot; done
    boot=$((boot + 1))
done
EOF
)"

out="$("$BIN/sv-sandbox" --timeout 3600 --host-tool qemu-system-x86_64 \
    --host-dir /usr/share/qemu --host-dir /usr/share/seabios \
    "ROUNDS=$ROUNDS; BARGS='$SV_BLK_B_ARGS'; CARGS='$SV_BLK_C_ARGS'; GUEST=\$(printf '%s' '$(printf '%s' "$guest" | base64 | tr -d '\n')' | base64 -d)
$l1" 2>&1 | tee >(cat >&2) | tr -d '\r' | sed -n 's/^L1| //p' | grep -E '^(sv|sv-b|sv-c|qemu) ' || true)"
grep -q FAILED <<<"$out" && echo "some boots failed: $(grep FAILED <<<"$out" | tr '\n' ' ')"

# one column of the samples of CFG's ROW: field F (2 = IOPS, 3 = µs, 4 = MB/s; idle: 2)
col() { grep "^$1 $2 " <<<"$out" | awk -v f="$3" '{ print $(f + 1) }' | tr '\n' ' '; }
echo "splitvisor-blk B: $SV_BLK_B_ARGS${SV_BLK_C_ARGS:+; C: $SV_BLK_C_ARGS}; $ROUNDS boots per configuration, 2 samples of each row per boot"
echo
C_HEAD="" C_SEP=""
[ -n "$SV_BLK_C_ARGS" ] && C_HEAD=" splitvisor-blk C, median (range) | ours / C |" C_SEP=" --- | --- |"
echo "| row (QD1, O_DIRECT) | splitvisor-blk, median (range) | splitvisor-blk B, median (range) | QEMU in-VMM virtio-blk, median (range) | ours / QEMU | ours / B |$C_HEAD"
echo "| --- | --- | --- | --- | --- | --- |$C_SEP"
line() { # NAME ROW FIELD
    local a b c d extra=""
    a="$(col sv "$2" "$3")" b="$(col sv-b "$2" "$3")" c="$(col qemu "$2" "$3")"
    # shellcheck disable=SC2086 # word lists
    if [ -n "$SV_BLK_C_ARGS" ]; then
        d="$(col sv-c "$2" "$3")"
        extra=" $(median $d) ($(range $d)) | $(ratio "$(median $a)" "$(median $d)") |"
    fi
    # shellcheck disable=SC2086 # word lists
    echo "| $1 | $(median $a) ($(range $a)) | $(median $b) ($(range $b)) | $(median $c) ($(range $c)) | $(ratio "$(median $a)" "$(median $c)") | $(ratio "$(median $a)" "$(median $b)") |$extra"
}
line "4 KiB randread, IOPS" rr4k 2
line "4 KiB randread, µs per request" rr4k 3
line "4 KiB randwrite, IOPS" rw4k 2
line "4 KiB randwrite, µs per request" rw4k 3
line "1 MiB read, MB/s" r1m 4
line "1 MiB write, MB/s" w1m 4
line "idle guest: CPU of VMM + backend, ms per s" idle 2
