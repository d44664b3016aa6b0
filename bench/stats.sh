# Sourced by the sandbox benches (bench/net.sh, bench/blk-vm.sh): the summaries of their
# samples. median: the middle value (the mean of the two middle ones for an even count);
# range: lowest–highest; ratio A B: A / B to two decimals (0 when B is 0).
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
range() { printf '%s\n' "$@" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
