#!/usr/bin/env bash
# scripts/verify-units.sh [BIN_DIR]: `systemd-analyze verify` every unit in systemd/, as
# instances (vm1, vm1-blk0 …), with ExecStart pointing at BIN_DIR (default target/release)
# instead of /usr/local/bin. Any message from systemd-analyze (an unknown key is only a
# warning to it) fails the check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="$(realpath "${1:-target/release}")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for f in systemd/*; do
    sed "s#/usr/local/bin/#$BIN/#g" "$f" >"$tmp/$(basename "$f")"
done
units=()
for f in "$tmp"/*@.*; do
    base="$(basename "$f")"
    case "$base" in
        splitvisor@.service | splitvisor-domain@.service) inst=vm1 ;;
        splitvisor-*@.*) kind="${base#splitvisor-}"; inst="vm1-${kind%%@*}0" ;;
    esac
    ln -s "$base" "$tmp/${base/@./@$inst.}"
    units+=("$tmp/${base/@./@$inst.}")
done
out="$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "${units[@]}" 2>&1)" || {
    printf '%s\n' "$out" >&2
    exit 1
}
if [ -n "$out" ]; then
    printf 'verify-units: systemd-analyze complained:\n%s\n' "$out" >&2
    exit 1
fi
echo "verify-units: ${#units[@]} units verified"
