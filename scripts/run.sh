#!/usr/bin/env bash
# The main job: build, fetch the guest kit, boot the nested-KVM sandbox, and inside it boot a
# real Linux guest under splitvisor (Debian cloud kernel, 2 vCPUs, 512 MiB, serial console),
# which reports its CPUs and memory and powers off.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
scripts/guest-kit.sh
cargo build --release --workspace --bins
echo "[run] booting the nested-KVM sandbox (L1 Linux under QEMU TCG with kvm-amd)"
GUEST_CMD='echo; echo "guest: $(nproc) vCPUs, $(grep MemTotal /proc/meminfo)"; uname -a'
B64=$(printf '%s' "$GUEST_CMD" | base64 -w0)
exec target/release/sv-sandbox "
ls -l /dev/kvm && sv-kvm-smoke &&
echo '[run] splitvisor: booting the Debian cloud kernel (2 vCPUs, 512M)' &&
splitvisor --kernel \$KIT/l2/vmlinuz --initramfs \$KIT/l2/initramfs-min.cpio.gz \
    --cpus 2 --memory 512M --cmdline 'console=ttyS0 quiet sv.cmd64=$B64' </dev/null &&
echo '[run] the guest powered off; splitvisor exited 0'"
