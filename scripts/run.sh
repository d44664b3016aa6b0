#!/usr/bin/env bash
# The main job: build, fetch the guest kit, then boot the nested-KVM sandbox and show KVM
# working inside it (a memfd-backed KVM guest running real instructions).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
scripts/guest-kit.sh
cargo build --release --workspace --bins
echo "[run] booting the nested-KVM sandbox (L1 Linux under QEMU TCG with kvm-amd)"
exec target/release/sv-sandbox 'ls -l /dev/kvm && sv-kvm-smoke'
