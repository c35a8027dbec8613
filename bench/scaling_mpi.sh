#!/usr/bin/env bash
# Data-parallel scaling on this machine: 1 and 2 ranks x threads per rank,
# per-rank and synchronised batch norm; prints a Markdown table of training
# images/s (global; min/median/max over ROUNDS interleaved rounds) and the
# share of a step spent in communication (median; rank 0's time inside
# collectives, waiting for the other rank included), then the allreduce timings
# of bench/allreduce_bench.c. docs/DISTRIBUTED.md shows its output.
#   ROUNDS=3 CONFIGS="1x1 1x2 2x1 2x1s 2x2 2x2s" bash bench/scaling_mpi.sh [MODEL] [IMAGES]
# (RxT: R ranks of T threads; a trailing s: --sync-bn. Defaults: resnet20, 2560 Fashion-MNIST images.)
set -eu
cd "$(dirname "$0")/.."
model=${1:-resnet20}; images=${2:-2560}; rounds=${ROUNDS:-1}
configs=(${CONFIGS:-1x1 1x2 2x1 2x1s 2x2 2x2s})
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
make --no-print-directory -s all build/tools/allreduce_bench >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
common=(--model "$model" --batch 128 --epochs 1 --train-limit "$images" --test-limit 256 --quiet --out "$tmp/run")
for ((k = 0; k < rounds; k++)); do
  for c in "${configs[@]}"; do
    ranks=${c%%x*} rest=${c#*x} threads=${c#*x}; threads=${threads%s} flags=()
    [ "$rest" != "$threads" ] && flags=(--sync-bn)
    if [ "$ranks" = 1 ]; then line=$(build/mfres train "${common[@]}" --threads "$threads")
    else line=$(mpirun -np "$ranks" --oversubscribe --bind-to none build/mfres train "${common[@]}" --threads "$threads" "${flags[@]}")
    fi
    echo "$(sed -E -n 's/.*images_per_s=([0-9.]+).*/\1/p' <<<"$line") $(sed -E -n 's/.*comm_share=([0-9.]+).*/\1/p' <<<"$line")" >>"$tmp/$c"
  done
done
echo "| ranks | threads/rank | batch norm | images/s (min/median/max) | communication share (median) |"
echo "|---|---|---|---|---|"
for c in "${configs[@]}"; do
  ranks=${c%%x*} threads=${c#*x}; bn=per-rank; [ "${threads%s}" != "$threads" ] && bn=sync; threads=${threads%s}
  [ "$ranks" = 1 ] && bn=-
  ips=$(cut -d' ' -f1 "$tmp/$c" | sort -n | awk '{ v[NR] = $1 } END { printf "%.0f/%.0f/%.0f", v[1], v[int((NR + 1) / 2)], v[NR] }')
  share=$(cut -s -d' ' -f2 "$tmp/$c" | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.0f %%", 100 * v[int((NR + 1) / 2)] }')
  printf '| %s | %s | %s | %s | %s |\n' "$ranks" "$threads" "$bn" "$ips" "$share"
done
echo
mpirun -np 2 --oversubscribe --bind-to none build/tools/allreduce_bench
