#!/usr/bin/env bash
# scripts/verify-units.sh [BIN_DIR]: `systemd-analyze verify` every unit in systemd/, as
# instances (vm1, vm1-blk0 …), with ExecStart pointing at BIN_DIR (default target/release)
# instead of /usr/local/bin. Any message from systemd-analyze (an unknown key is only a
# warning to it) fails the check. Then `systemd-analyze security` scores every service unit
# (printed; docs/security.md keeps them): a backend's above 2.0 fails the check.
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
failed=0
for u in "${units[@]}"; do
    case "$u" in *.service) ;; *) continue ;; esac
    name="$(basename "$u")"
    score="$(SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=true --no-pager "$u" 2>&1 |
        sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
    [ -n "$score" ] || { echo "verify-units: no security score for $name" >&2; exit 1; }
    limit=""
    case "$name" in splitvisor-blk@* | splitvisor-net@* | splitvisor-balloon@*) limit=2.0 ;; esac
    if [ -n "$limit" ] && awk -v s="$score" -v l="$limit" 'BEGIN { exit !(s > l) }'; then
        echo "verify-units: $name: exposure $score, above $limit" >&2
        failed=1
    else
        echo "verify-units: $name: exposure $score${limit:+ (limit $limit)}"
    fi
done
exit "$failed"
