#!/usr/bin/env bash
# The test command (README, and .ci/run): installs what it needs, fetches the guest kit, checks
# formatting and lints, builds the release binaries, and runs every test (unit tests and the
# real-guest tests in the nested-KVM sandbox).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
scripts/guest-kit.sh
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "[test] cargo build --release"
cargo build --release --workspace --bins --quiet
echo "[test] systemd units"
scripts/verify-units.sh target/release
echo "[test] cargo test"
# sandbox tests are heavy (each boots L1 under TCG on 2 cores): run them one at a time
cargo test --release --workspace -- --test-threads=1
