#!/usr/bin/env bash
# Install the host packages splitvisor's build, guest kit, tests and benchmarks need (Debian 12,
# as root).
# openssh-server is for svctl's remote-mode test, which runs its own sshd on 127.0.0.1 (the
# package's service is not started where no init system runs, as in CI's containers).
# qemu-system-x86 and qemu-utils go in one command, both from bookworm: the machine may carry a
# newer qemu-utils backport that conflicts with bookworm's qemu-system-common.
set -euo pipefail
need=()
for cmd in qemu-system-x86_64:qemu-system-x86 qemu-storage-daemon:qemu-system-common \
    cpio:cpio lz4:lz4 xz:xz-utils zstd:zstd depmod:kmod ip:iproute2 iperf3:iperf3 \
    nft:nftables dnsmasq:dnsmasq-base ping:iputils-ping systemd-analyze:systemd fio:fio \
    ssh:openssh-client /usr/sbin/sshd:openssh-server; do
    command -v "${cmd%%:*}" >/dev/null || need+=("${cmd#*:}")
done
# qemu-img must come from the same release as qemu-system (7.2 on bookworm)
if command -v qemu-img >/dev/null && ! qemu-img --version | grep -q 'version 7\.'; then
    need+=(qemu-utils)
fi
if [ ${#need[@]} -eq 0 ]; then
    echo "[install-deps] host packages present"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "install-deps: run as root to install: ${need[*]}" >&2; exit 1; }
echo "[install-deps] installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --allow-downgrades qemu-system-x86 qemu-utils/bookworm cpio lz4 xz-utils \
    zstd kmod iproute2 iperf3 nftables dnsmasq-base iputils-ping systemd fio openssh-client \
    openssh-server >/dev/null
echo "[install-deps] done: $(qemu-system-x86_64 --version | head -n1)"
