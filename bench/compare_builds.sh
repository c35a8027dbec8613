#!/usr/bin/env bash
# Two mfres builds side by side (a change against its parent), interleaved over
# several rounds on the same model, shapes and threads: the ratio of medians is
# what a change did to speed (the machine is noisy; only ratios measured in one
# command mean anything).
#   bash bench/compare_builds.sh OLD_MFRES NEW_MFRES [rounds] [threads] [bench flags...]
# e.g. bash bench/compare_builds.sh /tmp/old/mfres build/mfres 5 2 --model resnet20 --batch 128 --input 3x32x32
set -euo pipefail
old=$1; new=$2; rounds=${3:-5}; threads=${4:-2}; shift 4 2>/dev/null || shift $#
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(--model resnet20 --batch 128 --input 3x32x32)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# The order alternates each round (old-new, new-old, ...): this machine's speed drifts within minutes, and a
# fixed order turned that drift into a false 5-10 % difference between two builds.
run() { "$1" bench "${flags[@]}" --mode vanilla --threads "$threads" --iters 6 | tail -1 >> "$2"; }
for r in $(seq "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then run "$old" "$tmp/old"; run "$new" "$tmp/new"
  else run "$new" "$tmp/new"; run "$old" "$tmp/old"; fi
done
med() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" "$1" | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[int((NR + 1) / 2)] }'; }
printf '%s, %s threads, %s rounds interleaved (medians, images/s)\n' "${flags[*]}" "$threads" "$rounds"
for pass in train infer; do
  o=$(med "$tmp/old" "${pass}_images_per_s"); n=$(med "$tmp/new" "${pass}_images_per_s")
  awk -v p="$pass" -v o="$o" -v n="$n" 'BEGIN { printf "  %-6s old %8.1f  new %8.1f  new/old %.3f\n", p, o, n, n / o }'
done
