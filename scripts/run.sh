#!/usr/bin/env bash
# The main job: build, fetch the guest kit, boot the nested-KVM sandbox, and inside it bring a
# real Linux guest up the way an operator would, with scripts/vm.sh and svctl (no systemd): a
# qcow2 disk served by splitvisor-blk, a NIC by splitvisor-net (a tap on a bridge in a network
# namespace made here, nothing else reachable) and a balloon by splitvisor-balloon, each
# backend awaited on its readiness, then splitvisor (Debian cloud kernel, 2 vCPUs, 512 MiB).
# The guest makes a file system, writes and reads a file, shows its CPUs, memory, disk and
# NIC, pings the bridge; `svctl setmem` takes 256 MiB back through the balloon and `svctl
# dominfo`/`dommemstat` show it; `vm.sh down` presses the ACPI power button and the guest
# powers off by itself; qemu-img then checks the image the guest wrote.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
scripts/guest-kit.sh
cargo build --release --workspace --bins
echo "[run] booting the nested-KVM sandbox (L1 Linux under QEMU TCG with kvm-amd)"
GUEST_CMD='echo; echo "guest: $(nproc) vCPUs, $(grep MemTotal /proc/meminfo)"; uname -a
echo "guest: disk vda: $(cat /sys/block/vda/size) sectors, $(ls /sys/block/vda/mq | wc -l) queue(s)"
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
echo "guest: the balloon took $((start - $(mt))) MiB: MemTotal now $(mt) MiB"
echo "guest: waiting for the power button"
sleep 300'
B64=$(printf '%s' "$GUEST_CMD" | base64 -w0)
exec target/release/sv-sandbox --host-tool qemu-img --host-tool ip --host-tool bash \
    --host-dir "$PWD/scripts" "
set -e
IP=/job/hostbin/ip  # (busybox sh would run its own ip applet)
ls -l /dev/kvm && sv-kvm-smoke
\$IP netns add run
cat > /tmp/run.sh <<'RUN'
set -e
# the console streams to this terminal until the domain ends
mkfifo /tmp/console-in && exec 3<>/tmp/console-in
wait_console() { i=0; while ! grep -q \"\$1\" /tmp/console.txt 2>/dev/null && [ \$i -lt 3000 ]; do sleep 0.1; i=\$((i + 1)); done; }
bash $PWD/scripts/vm.sh up demo --disk /tmp/demo.qcow2 --disk-size 1G \\
    --bridge br0 --bridge-addr 10.0.2.1/24 --vcpus 2 --memory 512M \\
    --kernel \$KIT/l2/vmlinuz --initramfs \$KIT/l2/initramfs.cpio.gz \\
    --cmdline 'console=ttyS0 quiet sv.cmd64=$B64'
svctl console demo </tmp/console-in | tee /tmp/console.txt &
wait_console 'waiting for the host'
echo '[run] host: svctl setmem demo 256M'
svctl setmem demo 256M
wait_console 'waiting for the power button'
echo '[run] host: svctl dominfo demo; svctl dommemstat demo'
svctl dominfo demo
svctl dommemstat demo
echo '[run] host: vm.sh down demo (ACPI power button; the guest powers off by itself)'
bash $PWD/scripts/vm.sh down demo --timeout 60
svctl list --all
echo '[run] qemu-img check of the image the guest wrote:'
qemu-img check /tmp/demo.qcow2
RUN
KIT=\$KIT \$IP netns exec run bash /tmp/run.sh
\$IP netns del run"
