#!/bin/sh
# /init of the L2 guest initramfs (the guest our vmm boots).
# Prints machine-readable markers on the serial console; the test harness reads them.
#   SPLITVISOR-GUEST-READY <uptime> nproc=<n> memtotal_kb=<kb>   userspace is up, modules loaded
#   SPLITVISOR-GUEST-EXIT <rc>                                     the sv.cmd command finished
#   SPLITVISOR-GUEST-POWER-BUTTON                                  ACPI power button: powering off
# Kernel command line: sv.cmd=WORD (a command without spaces) or sv.cmd64=BASE64 (any script).
# Without a command an interactive shell runs on the console; when it exits the guest powers off.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1

while read -r mod; do
    insmod "/lib/modules/$mod" 2>/dev/null || echo "SPLITVISOR-GUEST-WARN insmod $mod failed"
done </etc/modules.load
ip link set lo up 2>/dev/null
hostname splitvisor-guest

# The ACPI power button (the vmm's vm.shutdown, `svctl shutdown`): a press powers the guest
# off cleanly, as systemd-logind or acpid would on a distribution.
for ev in /sys/class/input/event*; do
    [ "$(cat "$ev/device/name" 2>/dev/null)" = "Power Button" ] || continue
    (
        dd if="/dev/${ev#/sys/class/}" bs=24 count=1 >/dev/null 2>&1 || exit 0
        echo "SPLITVISOR-GUEST-POWER-BUTTON"
        sync
        poweroff -f
    ) &
done

cmd=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        sv.cmd64=*) cmd=$(echo "${arg#sv.cmd64=}" | base64 -d) ;;
        sv.cmd=*) cmd="${arg#sv.cmd=}" ;;
    esac
done

memtotal=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
echo "SPLITVISOR-GUEST-READY $(cut -d' ' -f1 /proc/uptime) nproc=$(nproc) memtotal_kb=$memtotal"

if [ -n "$cmd" ]; then
    sh -c "$cmd"
    echo "SPLITVISOR-GUEST-EXIT $?"
else
    setsid cttyhack sh -l
fi
sync
poweroff -f
