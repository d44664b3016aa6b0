#!/usr/bin/env bash
# Fetch and build the guest kit: everything a real guest needs, from Debian packages
# (apt-get download + dpkg -x, never installed).
#
#   $SPLITVISOR_CACHE (default ~/.cache/splitvisor)
#     debs/                   downloaded .deb files (kept, so a rebuild downloads nothing)
#     kit/                    the kit; tests and the sandbox see it as $KIT (/kit inside L1)
#       l2/vmlinuz            Debian cloud kernel, bzImage        (L2: the guest our vmm boots)
#       l2/vmlinux            the same kernel as ELF, with its PVH note
#       l2/initramfs-min.cpio.gz  busybox + virtio modules + /init (scripts/guest/l2-init.sh)
#       l2/initramfs.cpio.gz  the same + fio, iperf3, mkfs.ext4, resize2fs and ethtool with their libraries
#       l1/vmlinuz            Debian generic kernel                (L1: the nested-KVM sandbox)
#       l1/initramfs.cpio.gz  busybox + kvm-amd/9p modules + glibc + /init (scripts/guest/l1-init.sh)
#       disks/raw.img         256 MiB raw test disk (sparse)
#       disks/disk.qcow2      256 MiB qcow2 test disk (qemu-img create)
#       MANIFEST              package versions the kit was built from
#
# Idempotent: when the kit matches the current Debian kernel ABI and this script, it does nothing.
set -euo pipefail

CACHE="${SPLITVISOR_CACHE:-$HOME/.cache/splitvisor}"
DEBS="$CACHE/debs"
KIT="$CACHE/kit"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ARCH_LIB=usr/lib/x86_64-linux-gnu

# Modules, resolved with their dependencies through modules.dep.
L2_MODULES="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk
            failover net_failover virtio_net virtio_balloon virtio_console evdev button"
L1_MODULES="irqbypass ccp kvm kvm-amd virtio virtio_ring virtio_pci 9pnet 9pnet_virtio netfs
            fscache 9p tun veth bridge crc32c_generic nf_tables nft_chain_nat nft_masq nft_ct nf_nat
            nf_conntrack vhost vhost_net"

step() { printf '[guest-kit %s] %s\n' "$(date +%T)" "$*"; }
die() { printf 'guest-kit: error: %s\n' "$*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb depmod cpio gzip lz4 qemu-img ldd sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is missing (run scripts/install-deps.sh)"
done

# The kernel ABI changes with Debian updates: resolve it through the metapackages.
kernel_pkg() {
    apt-cache depends "$1" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
L2_PKG="$(kernel_pkg linux-image-cloud-amd64)"
L1_PKG="$(kernel_pkg linux-image-amd64)"
if [ -z "$L2_PKG" ] || [ -z "$L1_PKG" ]; then
    step "apt lists are empty: running apt-get update"
    apt-get update -qq || die "apt-get update failed; cannot resolve the Debian kernel packages"
    L2_PKG="$(kernel_pkg linux-image-cloud-amd64)"
    L1_PKG="$(kernel_pkg linux-image-amd64)"
fi
[ -n "$L2_PKG" ] && [ -n "$L1_PKG" ] || die "cannot resolve linux-image-cloud-amd64 / linux-image-amd64"

KEY="$L2_PKG $L1_PKG $(cat "$0" "$HERE/extract-vmlinux.sh" "$HERE"/guest/*.sh | sha256sum | cut -c1-16)"
if [ -f "$KIT/MANIFEST" ] && [ "$(head -n1 "$KIT/MANIFEST")" = "$KEY" ]; then
    step "guest kit is up to date in $KIT ($L2_PKG, $L1_PKG)"
    exit 0
fi

START=$(date +%s)
step "building the guest kit in $KIT"
mkdir -p "$DEBS"
WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# ---- download ---------------------------------------------------------------------------
# fio and iperf3 run in the guest with their shared libraries: take every library package
# they depend on (recursively) and resolve what the binaries really load with ldd below.
USERLAND="busybox-static fio iperf3 libiperf0 e2fsprogs ethtool"
LIBS="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances fio iperf3 e2fsprogs ethtool | grep -E '^lib[a-z0-9.+-]+$' | sort -u | tr '\n' ' ')"
want=()
for pkg in $L2_PKG $L1_PKG $USERLAND $LIBS; do
    ls "$DEBS/${pkg}_"*.deb >/dev/null 2>&1 || want+=("$pkg")
done
if [ ${#want[@]} -gt 0 ]; then
    step "downloading ${#want[@]} Debian packages (the two kernels are ~100 MB)"
    (cd "$DEBS" && apt-get download "${want[@]}") || die "apt-get download failed"
fi
deb() { ls -t "$DEBS/${1}_"*.deb | head -n1; }

# ---- unpack -----------------------------------------------------------------------------
step "unpacking kernels and userland"
SYSROOT="$WORK/sysroot"
mkdir -p "$SYSROOT"
for pkg in $USERLAND $LIBS; do dpkg-deb -x "$(deb "$pkg")" "$SYSROOT"; done
for pkg in $L2_PKG $L1_PKG; do
    mkdir -p "$WORK/$pkg"
    dpkg-deb -x "$(deb "$pkg")" "$WORK/$pkg"
    depmod -b "$WORK/$pkg" "${pkg#linux-image-}"
done

# ---- helpers ----------------------------------------------------------------------------
# new_root DIR: an initramfs skeleton with a static busybox and its applet links.
new_root() {
    local root="$1"
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules,$ARCH_LIB,usr/lib64}
    cp "$SYSROOT/bin/busybox" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    ln -sfn usr/lib64 "$root/lib64"
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
    mknod -m 666 "$root/dev/null" c 1 3 2>/dev/null || true
}

# add_modules ROOT KERNEL_DIR VERSION MODULES...: copy the modules and their dependencies,
# and write /etc/modules.load in a valid load order (dependencies first).
add_modules() {
    local root="$1" kdir="$2" ver="$3"; shift 3
    local mdir="$kdir/lib/modules/$ver" order=() m line dep
    for m in "$@"; do
        line="$(grep -E "/${m}\.ko(\.[a-z]+)?:" "$mdir/modules.dep" || true)"
        if [ -z "$line" ]; then
            grep -qE "/${m}\.ko" "$mdir/modules.builtin" || die "module $m not found in $ver"
            continue # built into the kernel
        fi
        # modules.dep lists dependencies so that loading them in reverse order works
        for dep in $(echo "${line#*:}" | tr ' ' '\n' | tac) "${line%%:*}"; do
            case " ${order[*]} " in *" $dep "*) ;; *) order+=("$dep") ;; esac
        done
    done
    : >"$root/etc/modules.load"
    for m in "${order[@]}"; do
        cp "$mdir/$m" "$root/lib/modules/$(basename "$m")"
        basename "$m" >>"$root/etc/modules.load"
    done
}

# add_libs ROOT LIB...: copy sysroot libraries (by file name) and what they load.
add_libs() {
    local root="$1" lib src files=(); shift
    for lib in "$@"; do # Debian 12 packages still ship some libraries under /lib
        src="$SYSROOT/$ARCH_LIB/$lib"
        [ -e "$src" ] || src="$SYSROOT/lib/x86_64-linux-gnu/$lib"
        cp -L "$src" "$root/$ARCH_LIB/$lib"
        files+=("$src")
    done
    add_libs_of "$root" "${files[@]}"
}

# add_libs_of ROOT FILE...: copy every shared library the programs/libraries load.
add_libs_of() {
    local root="$1"; shift
    local libpath="$SYSROOT/$ARCH_LIB:$SYSROOT/lib/x86_64-linux-gnu:$SYSROOT/$ARCH_LIB/ceph"
    local out
    out="$(LD_LIBRARY_PATH="$libpath" ldd "$@" 2>&1)" || true
    if echo "$out" | grep -q 'not found'; then
        die "unresolved libraries: $(echo "$out" | grep 'not found' | sort -u | tr '\n' ' ')"
    fi
    echo "$out" | awk '/=> \// {print $3} /^\t\/[^ ]*ld-linux/ {print $1}' | sort -u |
        while read -r lib; do
            local rel="${lib#"$SYSROOT"}" dest
            case "$rel" in
                /lib64/*) dest="$root/usr/lib64/$(basename "$rel")" ;;
                */ceph/*) dest="$root/$ARCH_LIB/ceph/$(basename "$rel")" ;;
                *) dest="$root/$ARCH_LIB/$(basename "$rel")" ;;
            esac
            mkdir -p "$(dirname "$dest")"
            [ -e "$dest" ] || cp -L "$lib" "$dest"
        done
    # the dynamic loader is looked up at /lib64/ld-linux-x86-64.so.2
    [ -e "$root/usr/lib64/ld-linux-x86-64.so.2" ] ||
        cp -L "$SYSROOT/lib64/ld-linux-x86-64.so.2" "$root/usr/lib64/" 2>/dev/null ||
        cp -L /lib64/ld-linux-x86-64.so.2 "$root/usr/lib64/"
}

pack() { # pack ROOT OUT: newc cpio, gzip
    (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 >"$2.tmp"
    mv "$2.tmp" "$2"
}

mkdir -p "$KIT.new"/{l1,l2,disks}
NEW="$KIT.new"

# ---- L2: the guest our vmm boots ----------------------------------------------------------
L2_VER="${L2_PKG#linux-image-}"
L2_DIR="$WORK/$L2_PKG"
step "L2 kernel $L2_VER: bzImage and ELF vmlinux"
cp "$L2_DIR/boot/vmlinuz-$L2_VER" "$NEW/l2/vmlinuz"
cp "$L2_DIR/boot/config-$L2_VER" "$NEW/l2/config"
"$HERE/extract-vmlinux.sh" "$NEW/l2/vmlinuz" "$NEW/l2/vmlinux"

step "L2 initramfs: busybox, virtio modules, /init (initramfs-min) + fio, iperf3, mkfs.ext4, resize2fs, ethtool (initramfs)"
R2="$WORK/l2root"
new_root "$R2"
add_modules "$R2" "$L2_DIR" "$L2_VER" $L2_MODULES
install -m 755 "$HERE/guest/l2-init.sh" "$R2/init"
pack "$R2" "$NEW/l2/initramfs-min.cpio.gz"
mkdir -p "$R2/usr/bin"
cp "$SYSROOT/usr/bin/fio" "$SYSROOT/usr/bin/iperf3" "$R2/usr/bin/"
MKE2FS=""
for f in "$SYSROOT/sbin/mke2fs" "$SYSROOT/usr/sbin/mke2fs"; do [ -f "$f" ] && MKE2FS="$f"; done
[ -n "$MKE2FS" ] || die "mke2fs not found in e2fsprogs"
cp "$MKE2FS" "$R2/usr/bin/mkfs.ext4"
RESIZE2FS=""
for f in "$SYSROOT/sbin/resize2fs" "$SYSROOT/usr/sbin/resize2fs"; do [ -f "$f" ] && RESIZE2FS="$f"; done
[ -n "$RESIZE2FS" ] || die "resize2fs not found in e2fsprogs"
cp "$RESIZE2FS" "$R2/usr/bin/resize2fs"
ETHTOOL=""
for f in "$SYSROOT/sbin/ethtool" "$SYSROOT/usr/sbin/ethtool"; do [ -f "$f" ] && ETHTOOL="$f"; done
[ -n "$ETHTOOL" ] || die "ethtool not found in its package"
cp "$ETHTOOL" "$R2/usr/bin/ethtool"
add_libs_of "$R2" "$R2/usr/bin/fio" "$R2/usr/bin/iperf3" "$R2/usr/bin/mkfs.ext4" "$R2/usr/bin/resize2fs" \
    "$R2/usr/bin/ethtool"
pack "$R2" "$NEW/l2/initramfs.cpio.gz"

# ---- L1: the nested-KVM sandbox ---------------------------------------------------------
L1_VER="${L1_PKG#linux-image-}"
L1_DIR="$WORK/$L1_PKG"
step "L1 kernel $L1_VER and initramfs: kvm-amd, 9p, glibc"
cp "$L1_DIR/boot/vmlinuz-$L1_VER" "$NEW/l1/vmlinuz"
R1="$WORK/l1root"
new_root "$R1"
add_modules "$R1" "$L1_DIR" "$L1_VER" $L1_MODULES
# glibc and libgcc for our Rust binaries (the sandbox brings other host tools' libraries itself)
add_libs "$R1" libc.so.6 libm.so.6 libgcc_s.so.1
install -m 755 "$HERE/guest/l1-init.sh" "$R1/init"
pack "$R1" "$NEW/l1/initramfs.cpio.gz"

# ---- test disks -------------------------------------------------------------------------
step "test disks"
truncate -s 256M "$NEW/disks/raw.img"
qemu-img create -q -f qcow2 "$NEW/disks/disk.qcow2" 256M

{
    echo "$KEY"
    echo "l2-kernel $L2_PKG $(dpkg-deb -f "$(deb "$L2_PKG")" Version)"
    echo "l1-kernel $L1_PKG $(dpkg-deb -f "$(deb "$L1_PKG")" Version)"
    for p in $USERLAND; do echo "userland $p $(dpkg-deb -f "$(deb "$p")" Version)"; done
} >"$NEW/MANIFEST"
rm -rf "$KIT"
mv "$NEW" "$KIT"
step "guest kit ready in $KIT ($(du -sh "$KIT" | cut -f1), $(( $(date +%s) - START )) s)"
