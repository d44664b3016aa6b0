#!/usr/bin/env bash
# The main job: build, fetch the guest kit, boot the nested-KVM sandbox, and inside it boot a
# real Linux guest under splitvisor (Debian cloud kernel, 2 vCPUs, 512 MiB, serial console)
# with its disk served by a splitvisor-blk process (a qcow2 image made by qemu-img) and its NIC
# by a splitvisor-net process (a tap in a network namespace made here, nothing else
# reachable) and a balloon served by splitvisor-balloon: the guest makes a file system, writes
# and reads a file, shows its CPUs, memory, disk and NIC, pings the namespace, gives 256 MiB
# back when the host sets the balloon's target, and powers off; qemu-img then checks the image
# and the balloon backend says how much memory it returned to the host.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
scripts/guest-kit.sh
cargo build --release --workspace --bins
echo "[run] booting the nested-KVM sandbox (L1 Linux under QEMU TCG with kvm-amd)"
GUEST_CMD='echo; echo "guest: $(nproc) vCPUs, $(grep MemTotal /proc/meminfo)"; uname -a
echo "guest: disk vda: $(cat /sys/block/vda/size) sectors, serial $(cat /sys/block/vda/serial), $(ls /sys/block/vda/mq | wc -l) queues"
mkfs.ext4 -q /dev/vda && mkdir -p /mnt && mount /dev/vda /mnt &&
echo "hello from the guest" > /mnt/hello && sync && echo "guest: wrote /mnt/hello: $(cat /mnt/hello)" && df -h /mnt | tail -n1
umount /mnt
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
echo "guest: nic eth0: $(cat /sys/class/net/eth0/address), mtu $(cat /sys/class/net/eth0/mtu)"
ping -c 3 10.0.2.1
mt() { awk "/^MemTotal:/ {print int(\$2 / 1024)}" /proc/meminfo; }
start=$(mt)
echo "guest: MemTotal ${start} MiB; waiting for the host to set the balloon target to 256M"
i=0; while [ $(mt) -gt $((start - 200)) ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
sleep 1
echo "guest: the balloon took $((start - $(mt))) MiB: MemTotal now $(mt) MiB"'
B64=$(printf '%s' "$GUEST_CMD" | base64 -w0)
exec target/release/sv-sandbox --host-tool qemu-img --host-tool ip "
set -e
IP=/job/hostbin/ip  # (busybox sh would run its own ip applet)
ls -l /dev/kvm && sv-kvm-smoke
qemu-img create -q -f qcow2 /tmp/disk.qcow2 1G
echo '[run] splitvisor-blk: serving /tmp/disk.qcow2 (2 queues)'
splitvisor-blk --socket /tmp/blk.sock --image /tmp/disk.qcow2 --queues 2 --serial RUN-DISK-1 --pidfile /tmp/blk.pid &
BLK=\$!
i=0; while [ ! -e /tmp/blk.pid ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
echo '[run] splitvisor-net: tap0 in network namespace run (10.0.2.1/24), MAC 52:54:00:00:00:01'
\$IP netns add run
\$IP netns exec run splitvisor-net --socket /tmp/net.sock --create-tap tap0 --mac 52:54:00:00:00:01 --pidfile /tmp/net.pid &
NET=\$!
i=0; while [ ! -e /tmp/net.pid ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
\$IP -n run addr add 10.0.2.1/24 dev tap0
echo '[run] splitvisor-balloon: control socket /tmp/balloon.ctl, free page reporting on'
splitvisor-balloon --socket /tmp/balloon.sock --control /tmp/balloon.ctl --free-page-reporting --pidfile /tmp/balloon.pid &
BAL=\$!
i=0; while [ ! -e /tmp/balloon.pid ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
# the host sets the balloon's target once the guest says it is waiting for it
( i=0; while ! grep -q 'waiting for the host' /tmp/console.log 2>/dev/null && [ \$i -lt 3000 ]; do sleep 0.1; i=\$((i + 1)); done
  echo '[run] host: splitvisor-balloon ctl set-target 256M'; splitvisor-balloon ctl --control /tmp/balloon.ctl set-target 256M ) &
echo '[run] splitvisor: booting the Debian cloud kernel (2 vCPUs, 512M; disk, NIC and balloon on their backends)'
splitvisor --kernel \$KIT/l2/vmlinuz --initramfs \$KIT/l2/initramfs.cpio.gz \
    --cpus 2 --memory 512M --cmdline 'console=ttyS0 quiet sv.cmd64=$B64' \
    --device vhost-user,type=blk,socket=/tmp/blk.sock,queues=2 \
    --device vhost-user,type=net,socket=/tmp/net.sock \
    --device vhost-user,type=balloon,socket=/tmp/balloon.sock </dev/null | tee /tmp/console.log
echo '[run] the guest powered off; splitvisor exited 0'
kill -USR1 \$NET; sleep 0.5
echo '[run] splitvisor-balloon: what it returned to the host'
splitvisor-balloon ctl --control /tmp/balloon.ctl info
kill -TERM \$BLK \$NET \$BAL; wait \$BLK \$NET \$BAL
\$IP netns del run
echo '[run] splitvisor-blk exited; qemu-img check of the image the guest wrote:'
qemu-img check /tmp/disk.qcow2"
