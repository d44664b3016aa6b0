#!/usr/bin/env bash
# Fuzzing campaigns (run by hand, not in CI): builds the cargo-fuzz targets in fuzz/ on the
# stable toolchain (`-s none`: no sanitizer, which needs nightly; overflow checks and debug
# assertions stay on), runs each for a number of executions or seconds, whichever comes first,
# then minimises its corpus back into fuzz/corpus/<target>/ and prints one table row per target
# (docs/testing.md keeps the table). Crashes land in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [--runs N] [--time SECONDS] [TARGET ...]   (default: all targets)
#
# CI replays the committed corpora instead (integration-tests/tests/fuzz_corpora.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"

runs=10000000
time=3600
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --time) time=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "[fuzz] installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo fuzz list)

echo "[fuzz] building ${targets[*]}"
(cd fuzz && cargo fuzz build -s none)
mkdir -p fuzz/logs
echo "| target | executions | seconds | exec/s | coverage (edges) | features | corpus (after cmin) | crashes |"
echo "|---|---|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
    log=fuzz/logs/$t.log
    mkdir -p "fuzz/corpus/$t"
    start=$(date +%s)
    status=0
    (cd fuzz && cargo fuzz run -s none "$t" "corpus/$t" -- \
        -runs="$runs" -max_total_time="$time" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1) >"$log" 2>&1 || status=$?
    secs=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    crashes=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
    (cd fuzz && cargo fuzz cmin -s none "$t" "corpus/$t") >>"$log" 2>&1 || true
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    echo "| $t | ${execs:-?} | $secs | ${rate:-?} | ${cov:-?} | ${ft:-?} | $corpus | $crashes (exit $status) |"
done
