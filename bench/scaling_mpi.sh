#!/usr/bin/env bash
# Data-parallel scaling on this machine: 1 and 2 ranks x threads per rank,
# per-rank and synchronised batch norm; prints a Markdown table of training
# images/s (global) and the share of a step spent in communication (rank 0's
# time inside allreduce calls, waiting for the other rank included), then the
# allreduce timings of bench/allreduce_bench.c. docs/DISTRIBUTED.md shows its output.
#   bash bench/scaling_mpi.sh [MODEL] [IMAGES]     (default resnet20, 2560 Fashion-MNIST images)
set -eu
cd "$(dirname "$0")/.."
model=${1:-resnet20}; images=${2:-2560}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
make --no-print-directory -s all build/tools/allreduce_bench >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
common=(--model "$model" --batch 128 --epochs 1 --train-limit "$images" --test-limit 256 --quiet --out "$tmp/run")
echo "| ranks | threads/rank | batch norm | images/s | communication share |"
echo "|---|---|---|---|---|"
for cfg in "1 1 -" "1 2 -" "2 1 per-rank" "2 1 sync" "2 2 per-rank" "2 2 sync"; do
  set -- $cfg
  ranks=$1 threads=$2 bn=$3 flags=()
  [ "$bn" = sync ] && flags=(--sync-bn)
  if [ "$ranks" = 1 ]; then
    line=$(build/mfres train "${common[@]}" --threads "$threads")
  else
    line=$(mpirun -np "$ranks" --oversubscribe --bind-to none build/mfres train "${common[@]}" --threads "$threads" "${flags[@]}")
  fi
  ips=$(sed -E -n 's/.*images_per_s=([0-9.]+).*/\1/p' <<<"$line")
  share=$(sed -E -n 's/.*comm_share=([0-9.]+).*/\1/p' <<<"$line")
  printf '| %s | %s | %s | %s | %s |\n' "$ranks" "$threads" "$bn" "$ips" "${share:+$(awk -v s="$share" 'BEGIN{printf "%.0f %%", 100*s}')}"
done
echo
mpirun -np 2 --oversubscribe --bind-to none build/tools/allreduce_bench
