#!/bin/sh
# /init of the L1 sandbox initramfs: a Linux with a real /dev/kvm (kvm-amd, nested SVM under
# QEMU TCG). Mounts the guest kit (/kit), our binaries (/sv-bin) and the job dir (/job) over
# virtio-9p, runs /job/run.sh and reports its status:
#   SANDBOX-L1-READY <uptime> kvm=yes|no
#   SANDBOX-HEARTBEAT up=<uptime> <comm/state/wchan of running and blocked tasks>  (every 30 s)
#   SANDBOX-EXIT <rc>
export PATH=/sv-bin:/job/hostbin:/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /tmp /run /kit /job /sv-bin
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
exec </dev/console >/dev/console 2>&1

while read -r mod; do
    insmod "/lib/modules/$mod" 2>/dev/null || echo "SANDBOX-WARN insmod $mod failed"
done </etc/modules.load

opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" kit /kit || echo "SANDBOX-WARN cannot mount the guest kit"
mount -t 9p -o "$opts,ro,cache=loose" svbin /sv-bin || echo "SANDBOX-WARN cannot mount the binaries"
mount -t 9p -o "$opts" job /job || echo "SANDBOX-WARN cannot mount the job dir"
ip link set lo up 2>/dev/null
export KIT=/kit JOB=/job HOME=/tmp

kvm=no
[ -c /dev/kvm ] && kvm=yes
echo "SANDBOX-L1-READY $(cut -d' ' -f1 /proc/uptime) kvm=$kvm"
# the heartbeat tells a stalled job (its processes blocked, e.g. on 9p I/O) from a stopped L1
heartbeat() {
    while sleep 30; do
        busy=""
        for p in /proc/[0-9]*; do
            { read -r _ comm state _ <"$p/stat"; } 2>/dev/null || continue
            case "$state" in
                D | R) busy="$busy $comm/$state/$(cat "$p/wchan" 2>/dev/null)" ;;
            esac
        done
        echo "SANDBOX-HEARTBEAT up=$(cut -d' ' -f1 /proc/uptime)$busy"
    done
}
heartbeat &
hb=$!
cd /job && sh /job/run.sh
rc=$?
kill $hb
sync
echo "SANDBOX-EXIT $rc"
poweroff -f
