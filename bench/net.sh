#!/usr/bin/env bash
# bench/net.sh [vm|native|all] [ROUNDS]: splitvisor-net, two ways.
#
# vm (inside the nested-KVM sandbox, side by side in one L1 run): the same guest kernel,
#   initramfs, 2 vCPUs and 512 MiB on splitvisor + splitvisor-net, on QEMU's built-in
#   userspace virtio-net with a tap (-accel kvm, -netdev tap,vhost=off), on QEMU with the
#   in-kernel vhost-net data path (-netdev tap,vhost=on: L1 loads vhost and vhost_net from the
#   Debian kernel) and, to tell the vmm's part from the process split's, on QEMU as the
#   vhost-user frontend of splitvisor-net; each with 1 and 2 queue pairs. First it measures what a switch between two processes costs in
#   L1 against one between two threads of a process (`perf bench sched pipe`, if perf is
#   installed): the emulated L1 makes the first several times dearer, and a vhost-user
#   backend adds process switches to every packet that QEMU's built-in device does not.
#   Traffic stays in a network namespace inside L1: iperf3 guest -> host and host -> guest
#   (TCP, as many streams as pairs), and the request/response rate of an adaptive ping from
#   the namespace to the guest (`ping -A`, which sends the next request after about a round
#   trip, so a few are outstanding at most — up to 9 were seen here — where `-f` queued up
#   while replies took over 10 ms): replies received per second of the run, and its mean round
#   trip (µs per request). Then, the guest idle, the CPU time the VMM and the backend use
#   in 5 s (ms per s). Each boot measures each of these twice (idle CPU once); ROUNDS (default
#   3) boots per configuration, taking turns (sv 1, qemu 1, vhost-net 1, qemu+sv 1, sv 2, ...,
#   then again) so that L1's drift — the same configuration ran 2-5x apart from one boot to the
#   next — hits all four. Reported: the median and the range of all samples. Compare ratios:
#   L1 itself is emulated.
# native (on the host, no VM): sv-netbench drives the backend alone through a VM-less
#   vhost-user frontend, ring -> tap and tap -> ring, 64- and 1514-byte frames, in a
#   namespace of its own. SV_NET_ARGS adds arguments to its splitvisor-net (e.g. "--sched other").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHAT="${1:-all}"
ROUNDS="${2:-3}"
scripts/install-deps.sh >/dev/null
cargo build --release --workspace --bins --quiet
BIN=target/release

# shellcheck source=bench/stats.sh
. bench/stats.sh

# the native run's namespace and backend, removed on any exit (also when `set -e` stops a step)
NB_NS="" NB_PID=""
cleanup_native() {
    if [ -n "$NB_PID" ]; then kill "$NB_PID" 2>/dev/null || true; wait "$NB_PID" 2>/dev/null || true; fi
    if [ -n "$NB_NS" ]; then ip netns del "$NB_NS" 2>/dev/null || true; fi
    NB_PID="" NB_NS=""
}
trap cleanup_native EXIT

native() {
    local ns="svnetbench$$"
    NB_NS="$ns"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # shellcheck disable=SC2086 # SV_NET_ARGS is a list of arguments
    ip netns exec "$ns" "$BIN/splitvisor-net" --socket "/tmp/$ns.sock" --create-tap nbtap \
        --pidfile "/tmp/$ns.pid" ${SV_NET_ARGS:-} 2>/dev/null &
    NB_PID=$!
    for _ in $(seq 100); do [ -f "/tmp/$ns.pid" ] && break; sleep 0.1; done
    echo "| direction | frame | packets/s (median of $ROUNDS) | Mbit/s |"
    echo "| --- | --- | --- | --- |"
    for dir in tx rx; do
        for size in 64 1514; do
            local p=() m=()
            for _ in $(seq "$ROUNDS"); do
                out="$(ip netns exec "$ns" timeout 60 "$BIN/sv-netbench" --socket "/tmp/$ns.sock" \
                    --tap nbtap --dir $dir --size $size --secs 3 --json)"
                p+=("$(echo "$out" | sed -E 's/.*"pps":([0-9]+).*/\1/')")
                m+=("$(echo "$out" | sed -E 's/.*"mbits":([0-9.]+).*/\1/')")
            done
            local name="ring -> tap"
            [ $dir = rx ] && name="tap -> ring"
            echo "| $name | $size | $(median "${p[@]}") | $(median "${m[@]}") |"
        done
    done
    cleanup_native
}

vm() {
    scripts/guest-kit.sh >/dev/null
    local guest
    # in the guest: wait for the link, then sv.rounds x (iperf3 out, iperf3 in), then stay up
    # while L1 pings it
    guest="$(cat <<'EOF'
P=$(cat /proc/cmdline | tr ' ' '\n' | grep '^sv.pairs=' | cut -d= -f2)
R=$(cat /proc/cmdline | tr ' ' '\n' | grep '^sv.rounds=' | cut -d= -f2)
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ethtool -L eth0 combined $P 2>/dev/null
i=0; until ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 60 ] && break; done
r=0
while [ $r -lt $R ]; do
    iperf3 -c 10.0.2.1 -t 4 -P $P -f m > /tmp/o 2>&1
    echo "BENCH-OUT $(grep receiver /tmp/o | tail -n1 | awk '{for (i=1;i<=NF;i++) if ($i=="Mbits/sec") print $(i-1)}')"
    iperf3 -c 10.0.2.1 -t 4 -P $P -R -f m > /tmp/i 2>&1
    echo "BENCH-IN $(grep receiver /tmp/i | tail -n1 | awk '{for (i=1;i<=NF;i++) if ($i=="Mbits/sec") print $(i-1)}')"
    r=$((r+1))
done
echo BENCH-PING-ME
sleep $((R * 6 + 12))
EOF
)"
    local l1
    l1="$(cat <<'EOF'
# busybox sh runs its own applets before PATH: the host's tools by their path
IP=/job/hostbin/ip PING=/job/hostbin/ping
G64=$(printf '%s' "$GUEST" | base64 | tr -d '\n')
qemu-system-x86_64 --version | head -n1
$IP netns add b
$IP -n b link set lo up
$IP netns exec b iperf3 -s >/dev/null 2>&1 &
SRV=$!
# a round trip between two processes, then between two threads of one process
if [ -x /job/hostbin/perf ]; then
    for mode in processes threads; do
        flag=""; [ $mode = threads ] && flag=-T
        echo "SWITCH $mode $(/job/hostbin/perf bench sched pipe $flag -l 20000 2>&1 | grep usecs/op | awk '{print $1}')"
    done
fi
CMD="console=ttyS0 quiet"
PER_BOOT=2
QEMU="qemu-system-x86_64 -L /usr/share/qemu -L /usr/share/seabios -accel kvm -cpu host -smp 2 -m 512M
    -nodefaults -no-user-config -display none -serial stdio -no-reboot
    -kernel $KIT/l2/vmlinuz -initrd $KIT/l2/initramfs.cpio.gz"
cpu() { # CPU time of the PIDs, in ticks (utime + stime)
    t=0; for pid in "$@"; do t=$((t + $(cut -d' ' -f14,15 /proc/$pid/stat | tr ' ' '+'))); done; echo $t
}
run() { # run sv|qsv|qemu|qvh PAIRS BOOT (qsv: QEMU in front of splitvisor-net; qvh: vhost-net)
    vmm=$1 p=$2 log=/tmp/$1-$2-$3.log NET=""
    if [ $vmm = sv ] || [ $vmm = qsv ]; then
        RUST_LOG=info $IP netns exec b splitvisor-net --socket /tmp/n.sock --create-tap t0 --queues $p --pidfile /tmp/n.pid 2>/tmp/n.err &
        NET=$!
        i=0; while [ ! -f /tmp/n.pid ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
        $IP -n b addr add 10.0.2.1/24 dev t0
    fi
    if [ $vmm = sv ]; then
        splitvisor --kernel $KIT/l2/vmlinuz --initramfs $KIT/l2/initramfs.cpio.gz --cpus 2 --memory 512M \
            --cmdline "$CMD sv.pairs=$p sv.rounds=$PER_BOOT sv.cmd64=$G64" \
            --device vhost-user,type=net,socket=/tmp/n.sock,queues=$p </dev/null >$log 2>&1 &
        VM=$!
    elif [ $vmm = qsv ]; then
        $QEMU -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \
            -chardev socket,id=n0,path=/tmp/n.sock -netdev vhost-user,id=net0,chardev=n0,queues=$p \
            -device virtio-net-pci,netdev=net0,mq=on,vectors=$((2 * p + 2)),romfile= \
            -append "$CMD sv.pairs=$p sv.rounds=$PER_BOOT sv.cmd64=$G64" </dev/null >$log 2>&1 &
        VM=$!
    else
        vhost=off; [ $vmm = qvh ] && vhost=on
        $IP netns exec b $QEMU -netdev tap,id=n0,ifname=t0,script=no,downscript=no,vhost=$vhost,queues=$p \
            -device virtio-net-pci,netdev=n0,mq=on,vectors=$((2 * p + 2)),romfile= \
            -append "$CMD sv.pairs=$p sv.rounds=$PER_BOOT sv.cmd64=$G64" </dev/null >$log 2>&1 &
        VM=$!
        i=0; until $IP -n b link show t0 >/dev/null 2>&1 || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
        $IP -n b addr add 10.0.2.1/24 dev t0
        $IP -n b link set t0 up
    fi
    i=0; until grep -q BENCH-PING-ME $log 2>/dev/null || ! kill -0 $VM 2>/dev/null || [ $i -ge 9000 ]; do
        sleep 0.1; i=$((i+1))
    done
    if grep -q BENCH-PING-ME $log; then
        r=0
        while [ $r -lt $PER_BOOT ]; do
            $IP netns exec b $PING -A -c 1000 -w 5 -q 10.0.2.15 > /tmp/ping.out 2>&1
            # "N packets transmitted, M received, ..., time Tms": M replies in T ms
            rate=$(grep transmitted /tmp/ping.out | awk '{ for (i = 1; i <= NF; i++) {
                if ($i ~ /^received/) m = $(i - 1); if ($i == "time") t = $(i + 1) + 0 }
                if (t > 0) printf "%.0f", m * 1000 / t; else print 0 }')
            [ -n "$rate" ] && [ "$rate" != 0 ] || cat /tmp/ping.out
            # (a file of its own: the VM still writes its console to $log at its own offset)
            echo "BENCH-RR $rate" >> $log.rr
            # "rtt min/avg/max/mdev = A/B/C/D ms": the mean round trip in µs
            echo "BENCH-LAT $(grep rtt /tmp/ping.out | awk -F'[/ ]' '{ printf "%.0f", $8 * 1000 }')" >> $log.rr
            r=$((r+1))
        done
        sleep 1
        c0=$(cpu $VM $NET); sleep 5; c1=$(cpu $VM $NET)
        echo "BENCH-IDLE $(( (c1 - c0) * 1000 / 100 / 5 ))" >> $log.rr
    else
        echo "BENCH-FAILED $vmm $p" >> $log.rr
    fi
    # what was dropped where: the tap's own counters (while the VMM still holds the tap), and
    # (ours) the backend's per-pair ones below
    echo "$vmm $p TAP $($IP -s -n b link show t0 | tr -s ' \n' ' ')"
    i=0; while kill -0 $VM 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
    kill -9 $VM 2>/dev/null; wait $VM
    if [ -n "$NET" ]; then
        kill $NET; wait $NET; rm -f /tmp/n.pid
        grep 'stats at exit' /tmp/n.err | sed "s/.*stats at exit: /$vmm $p BACKEND /"
    fi
    $IP -n b link del t0 2>/dev/null
    for k in OUT IN RR LAT IDLE; do echo "$vmm $p $k $(cat $log $log.rr 2>/dev/null | grep "^BENCH-$k" | awk '{print $2}' | tr '\n' ' ')"; done
    grep -q BENCH-FAILED $log.rr 2>/dev/null && tail -20 $log
}
boot=1
while [ $boot -le $ROUNDS ]; do
    for p in 1 2; do run sv $p $boot; run qemu $p $boot; run qvh $p $boot; run qsv $p $boot; done
    boot=$((boot + 1))
done
kill $SRV
$IP netns del b
EOF
)"
    local out
    out="$("$BIN/sv-sandbox" --timeout 3600 --host-tool qemu-system-x86_64 --host-tool ip \
        --host-tool iperf3 --host-tool ping $(command -v perf >/dev/null && echo --host-tool perf) \
        --host-dir /usr/share/qemu --host-dir /usr/share/seabios \
        "ROUNDS=$ROUNDS; GUEST=\$(printf '%s' '$(printf '%s' "$guest" | base64 | tr -d '\n')' | base64 -d)
$l1" 2>&1 | tee >(cat >&2) | tr -d '\r' | sed -n 's/^L1| //p' | grep -E '^((sv|qsv|qemu|qvh) [12] (OUT|IN|RR|LAT|IDLE)|SWITCH) ' || true)"
    echo "$out" | grep '^SWITCH ' | awk '{ printf "round trip between two %s in L1: %s us\n", $2, $3 }'
    echo
    echo "| pairs | test | splitvisor + splitvisor-net, median (range) | QEMU virtio-net (userspace, tap), median (range) | QEMU + vhost-net (kernel), median (range) | QEMU + splitvisor-net (vhost-user), median (range) | ratio: ours / QEMU | ratio: ours / vhost-net | ratio: QEMU + splitvisor-net / QEMU |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for p in 1 2; do
        for k in OUT IN RR LAT IDLE; do
            sa=$(echo "$out" | grep "^sv $p $k " | cut -d' ' -f4-)
            sb=$(echo "$out" | grep "^qemu $p $k " | cut -d' ' -f4-)
            sv=$(echo "$out" | grep "^qvh $p $k " | cut -d' ' -f4-)
            sc=$(echo "$out" | grep "^qsv $p $k " | cut -d' ' -f4-)
            a="$(median $sa)" b="$(median $sb)" v="$(median $sv)" c="$(median $sc)"
            case $k in
                OUT) name="TCP guest -> host, Mbit/s" ;;
                IN) name="TCP host -> guest, Mbit/s" ;;
                RR) name="ping request/response, per s" ;;
                LAT) name="ping round trip, µs (lower is better)" ;;
                IDLE) name="idle guest: CPU of VMM + backend, ms per s (lower is better)" ;;
            esac
            echo "| $p | $name | $a ($(range $sa)) | $b ($(range $sb)) | $v ($(range $sv)) | $c ($(range $sc)) | $(ratio "$a" "$b") | $(ratio "$a" "$v") | $(ratio "$c" "$b") |"
        done
    done
}

case "$WHAT" in
    native) native ;;
    vm) vm ;;
    all) native; vm ;;
    *) echo "usage: bench/net.sh [vm|native|all] [ROUNDS]" >&2; exit 2 ;;
esac
