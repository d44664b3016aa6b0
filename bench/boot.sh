#!/usr/bin/env bash
# Boot time to the guest's init marker and peak RSS: splitvisor vs QEMU (-accel kvm, microvm,
# direct kernel boot), same kernel, initramfs, 512 MiB and 1 vCPU, side by side in one run
# inside the nested-KVM sandbox (interleaved runs; compare ratios, not absolute times, since
# L1 itself is emulated).
# Usage: bench/boot.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${1:-10}"
scripts/install-deps.sh >/dev/null
scripts/guest-kit.sh
cargo build --release --workspace --bins --quiet
# the guest prints its marker, then powers off; `quiet` keeps both consoles equally short
APPEND='console=ttyS0 quiet sv.cmd=true'
# the same kernel for both VMMs in each pair: bzImage, then the ELF vmlinux (PVH entry)
sv() { echo "splitvisor --kernel \$KIT/l2/$1 --initramfs \$KIT/l2/initramfs-min.cpio.gz --memory 512M --cpus 1 --cmdline '$APPEND'"; }
qemu() { echo "qemu-system-x86_64 -L /usr/share/qemu -accel kvm -cpu host -M microvm -m 512M -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -kernel \$KIT/l2/$1 -initrd \$KIT/l2/initramfs-min.cpio.gz -append '$APPEND'"; }
exec target/release/sv-sandbox --timeout 1800 --host-tool qemu-system-x86_64 --host-dir /usr/share/qemu \
    "qemu-system-x86_64 --version | head -n1; sv-bootbench --runs $RUNS --guest-mem-mib 512 \
     --case \"splitvisor-bz=$(sv vmlinuz)\" --case \"qemu-bz=$(qemu vmlinuz)\" \
     --case \"splitvisor-elf=$(sv vmlinux)\" --case \"qemu-elf=$(qemu vmlinux)\""
