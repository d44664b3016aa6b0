#!/usr/bin/env bash
# Boot time to the guest's init marker, peak RSS and VMM overhead (RSS outside guest RAM):
# splitvisor in each RAM mode vs QEMU (-accel kvm, microvm, direct kernel boot), same kernel,
# initramfs, 512 MiB and 1 vCPU, side by side in one run inside the nested-KVM sandbox
# (interleaved runs; compare ratios, not absolute times, since L1 itself is emulated).
#   splitvisor       the default: shared RAM in 2 MiB pages (vm.info's ram_pages)
#   splitvisor-4k    --memory 512M,hugepages=off: a plain memfd in 4 KiB pages (the old default)
#   splitvisor-priv  --memory 512M,shared=off: private anonymous THP, the lower bound
#   qemu             microvm with its default private RAM (its fastest)
#   qemu-memfd       microvm with memory-backend-memfd,share=on (its vhost-user configuration)
# Each for the bzImage (-bz) and the ELF vmlinux through PVH (-elf).
# Usage: bench/boot.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${1:-10}"
scripts/install-deps.sh >/dev/null
scripts/guest-kit.sh
cargo build --release --workspace --bins --quiet
# the guest prints its marker, then powers off; `quiet` keeps both consoles equally short
APPEND='console=ttyS0 quiet sv.cmd=true'
# sv KERNEL [MEMORY-OPTIONS]
sv() { echo "splitvisor --kernel \$KIT/l2/$1 --initramfs \$KIT/l2/initramfs-min.cpio.gz --memory 512M$2 --cpus 1 --cmdline '$APPEND'"; }
# qemu KERNEL [MEMORY-ARGUMENTS]
qemu() { echo "qemu-system-x86_64 -L /usr/share/qemu -accel kvm -cpu host -M microvm$2 -m 512M -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -kernel \$KIT/l2/$1 -initrd \$KIT/l2/initramfs-min.cpio.gz -append '$APPEND'"; }
MEMFD=",memory-backend=mem -object memory-backend-memfd,id=mem,size=512M,share=on"
CASES=""
RATIOS=""
for k in bz:vmlinuz elf:vmlinux; do
    f=${k%%:*} kernel=${k#*:}
    CASES="$CASES --case \"splitvisor-$f=$(sv "$kernel" "")\""
    CASES="$CASES --case \"splitvisor-4k-$f=$(sv "$kernel" ,hugepages=off)\""
    CASES="$CASES --case \"splitvisor-priv-$f=$(sv "$kernel" ,shared=off)\""
    CASES="$CASES --case \"qemu-$f=$(qemu "$kernel" "")\""
    CASES="$CASES --case \"qemu-memfd-$f=$(qemu "$kernel" "$MEMFD")\""
    for other in qemu-$f qemu-memfd-$f splitvisor-priv-$f splitvisor-4k-$f; do
        RATIOS="$RATIOS --ratio splitvisor-$f/$other"
    done
done
exec target/release/sv-sandbox --timeout 3000 --host-tool qemu-system-x86_64 --host-dir /usr/share/qemu \
    "qemu-system-x86_64 --version | head -n1; cat /sys/kernel/mm/transparent_hugepage/shmem_enabled; \
     sv-bootbench --runs $RUNS --guest-mem-mib 512 $CASES $RATIOS"
