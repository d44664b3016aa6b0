#!/usr/bin/env bash
# scripts/sandbox.sh [OPTIONS] COMMAND...
# Builds our release binaries, then runs COMMAND inside the nested-KVM sandbox: an L1 Linux
# under qemu-system-x86_64 -accel tcg -cpu max, with a real /dev/kvm (kvm-amd), our binaries on
# PATH and the guest kit at $KIT (/kit). Exits with COMMAND's status. See `--help` for options
# (--timeout, --memory, --cpus, --host-tool NAME, --keep, --direct). Several words are run as
# that argv, unchanged; a single word is a shell command line.
# Examples: scripts/sandbox.sh sv-kvm-smoke
#           scripts/sandbox.sh sh -c 'test -c /dev/kvm && echo ok'
#           scripts/sandbox.sh 'ls -l /dev/kvm && sv-kvm-smoke'
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --workspace --bins --quiet
exec target/release/sv-sandbox "$@"
