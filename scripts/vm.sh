#!/usr/bin/env bash
# Bring a VM with a qcow2 disk, a NIC and a balloon up and down without systemd (root).
#
#   vm.sh up NAME --disk IMG [--disk-size 1G] [--bridge BR [--bridge-addr A/P]] [--memory 512M]
#            [--vcpus 2] [--kernel K] [--initramfs I] [--cmdline C]
#       a bridge (scripts/hostnet.sh bridge-up, idempotent), the qcow2 image (qemu-img create
#       when it does not exist yet), then `svctl install`: the domain is defined and started —
#       splitvisor-blk, splitvisor-net (a tap on the bridge) and splitvisor-balloon, each
#       awaited on its readiness, then splitvisor. Kernel and initramfs default to the guest
#       kit's.
#   vm.sh down NAME [--timeout 60] [--keep]
#       graceful shutdown (ACPI power button) within the timeout, else destroy; then undefine
#       (unless --keep). Every process and socket of the domain is gone afterwards.
#   vm.sh status NAME
#       dominfo, devices and (when running) memory statistics.
#
# svctl is taken from next to this script's build (target/release) or from PATH.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KIT="${SPLITVISOR_CACHE:-$HOME/.cache/splitvisor}/kit"
SVCTL="$HERE/../target/release/svctl"
[ -x "$SVCTL" ] || SVCTL=svctl
die() { echo "vm.sh: $*" >&2; exit 1; }
say() { echo "[vm.sh] $*"; }

up() {
    local name=$1 disk="" size=1G bridge="" addr="" memory=512M vcpus=2 cmdline="console=ttyS0 quiet"
    local kernel="$KIT/l2/vmlinuz" initramfs="$KIT/l2/initramfs.cpio.gz"
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --disk) disk=$2 ;;
            --disk-size) size=$2 ;;
            --bridge) bridge=$2 ;;
            --bridge-addr) addr=$2 ;;
            --memory) memory=$2 ;;
            --vcpus) vcpus=$2 ;;
            --kernel) kernel=$2 ;;
            --initramfs) initramfs=$2 ;;
            --cmdline) cmdline=$2 ;;
            *) die "up: unknown option $1" ;;
        esac
        shift 2
    done
    [ -n "$disk" ] || die "up: --disk IMG is required"
    local net=()
    if [ -n "$bridge" ]; then
        say "bridge $bridge${addr:+ ($addr)}"
        bash "$HERE/hostnet.sh" bridge-up "$bridge" $addr
        net=(--network "bridge=$bridge")
    fi
    if [ ! -e "$disk" ]; then
        say "creating $disk (qcow2, $size)"
        qemu-img create -q -f qcow2 "$disk" "$size"
    fi
    say "svctl install $name: disk $disk, ${bridge:+NIC on $bridge, }balloon, $vcpus vCPUs, $memory"
    "$SVCTL" install --name "$name" --memory "$memory" --vcpus "$vcpus" \
        --disk "path=$disk,format=qcow2" "${net[@]}" \
        --kernel "$kernel" --initramfs "$initramfs" --cmdline "$cmdline"
    "$SVCTL" list
}

down() {
    local name=$1 timeout=60 keep=""
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --timeout) timeout=$2; shift ;;
            --keep) keep=1 ;;
            *) die "down: unknown option $1" ;;
        esac
        shift
    done
    if "$SVCTL" --json dominfo "$name" | grep -q '"state": "shut off"'; then
        say "$name is not running"
    else
        say "shutting $name down (power button, up to ${timeout}s)"
        "$SVCTL" shutdown "$name" --timeout "$timeout" || {
            say "$name did not power off: destroying it"
            "$SVCTL" destroy "$name"
        }
    fi
    [ -n "$keep" ] || "$SVCTL" undefine "$name"
}

status() {
    "$SVCTL" dominfo "$1"
    "$SVCTL" domblklist "$1"
    "$SVCTL" domiflist "$1"
    if ! "$SVCTL" --json dominfo "$1" | grep -q '"state": "shut off"'; then
        "$SVCTL" dommemstat "$1"
    fi
}

[ $# -ge 2 ] || die "usage: vm.sh up|down|status NAME [options]"
cmd=$1
shift
case "$cmd" in
    up) up "$@" ;;
    down) down "$@" ;;
    status) status "$1" ;;
    *) die "unknown command $cmd (up, down or status)" ;;
esac
