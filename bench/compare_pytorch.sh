#!/usr/bin/env bash
# Runs mfres and PyTorch side by side on the same ResNet, shapes and thread
# count, interleaved over several rounds (the machine is noisy: only ratios
# measured in one command mean anything), and prints a table.
#   bash bench/compare_pytorch.sh [rounds] [threads] [models...]
# A model is a depth N (resnetN with $BLOCK blocks), 164 with BLOCK=bottleneck,
# or resnextN-CxDd (100 classes; BLOCK postact or preact).
# Environment: MFRES (default build/mfres), BATCH (128), INPUT (3x32x32), BLOCK (postact), ITERS (6).
set -euo pipefail
cd "$(dirname "$0")/.."
MFRES=${MFRES:-build/mfres}
rounds=${1:-3}; threads=${2:-2}; shift 2 2>/dev/null || shift $#
depths=${*:-20}
batch=${BATCH:-128}; input=${INPUT:-3x32x32}; block=${BLOCK:-postact}; iters=${ITERS:-6}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
gemm=$("$MFRES" bench --gemm --threads "$threads" | sed -n 's/^sgemm_gflops=//p')
# The flags of a model for mfres and for resnet_torch.py.
mfres_model() { case "$1" in resnext*) echo "--model $1 --classes 100";; *) echo "--model resnet$1";; esac; }
torch_model() {
  case "$1" in
    resnext*) local d=${1#resnext}; echo "--depth ${d%%-*} --resnext $(echo "${d#*-}" | tr -d d) --classes 100";;
    *) echo "--depth $1";;
  esac
}
for d in $depths; do
  for r in $(seq "$rounds"); do
    # shellcheck disable=SC2046
    /usr/bin/time -a -o "$tmp/rss-mfres-$d" -f '%M' "$MFRES" bench $(mfres_model "$d") --block "$block" --mode vanilla --batch "$batch" --input "$input" \
      --threads "$threads" --iters "$iters" | tail -1 >> "$tmp/mfres-$d"
    # shellcheck disable=SC2046
    /usr/bin/time -a -o "$tmp/rss-torch-$d" -f '%M' /usr/bin/python3 bench/resnet_torch.py $(torch_model "$d") \
      --block "$block" --batch "$batch" --input "$input" --threads "$threads" --iters "$iters" >> "$tmp/torch-$d"
    # shellcheck disable=SC2046
    /usr/bin/time -a -o "$tmp/rss-torchcl-$d" -f '%M' /usr/bin/python3 bench/resnet_torch.py $(torch_model "$d") \
      --block "$block" --batch "$batch" --input "$input" --threads "$threads" --iters "$iters" --channels-last \
      >> "$tmp/torchcl-$d"
  done
done
# shellcheck disable=SC2046
flops() { "$MFRES" bench $(mfres_model "$1") --block "$block" --batch 1 --input "$input" --iters 1 --warmup 0 --threads 1 \
  | sed -n 's/.*training: *\([0-9.]*\) images\/s.* \([0-9.]*\) GFLOP.*/\1 \2/p' | awk '{ printf "%.6f", $2 / $1 * 1e9 / 3 }'; }
stats() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" "$1" | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f %.1f %.1f", a[1], a[int((NR + 1) / 2)], a[NR] }'; }
printf '\nResNet (%s), batch %s, input %s, %s threads, %s rounds interleaved; sgemm peak %s GFLOP/s\n' \
  "$block" "$batch" "$input" "$threads" "$rounds" "$gemm"
printf '%-16s %-9s %-22s %-22s %-22s %7s %9s %7s\n' model pass "mfres min/med/max" "torch NCHW min/med/max" \
  "torch NHWC min/med/max" ratio "GFLOP/s" "%peak"
for d in $depths; do
  fwd=$(flops "$d")
  for pass in train infer; do
    read -r a1 a2 a3 <<< "$(stats "$tmp/mfres-$d" "${pass}_images_per_s")"
    read -r b1 b2 b3 <<< "$(stats "$tmp/torch-$d" "${pass}_images_per_s")"
    read -r c1 c2 c3 <<< "$(stats "$tmp/torchcl-$d" "${pass}_images_per_s")"
    best=$(awk -v b="$b2" -v c="$c2" 'BEGIN { print (b > c ? b : c) }')
    mult=$([ "$pass" = train ] && echo 3 || echo 1)
    awk -v m="$(case $d in resnext*) echo "$d";; *) echo "resnet$d";; esac)" -v p="$pass" -v a="$a1/$a2/$a3" -v b="$b1/$b2/$b3" -v c="$c1/$c2/$c3" -v am="$a2" \
      -v best="$best" -v f="$fwd" -v k="$mult" -v g="$gemm" \
      'BEGIN { gf = am * f * k / 1e9; printf "%-16s %-9s %-22s %-22s %-22s %6.2fx %9.1f %6.1f%%\n", m, p, a, b, c, am / best, gf, 100 * gf / g }'
  done
done
median_mib() { sort -n "$1" | awk '{ a[NR] = $1 } END { printf "%.0f", a[int((NR + 1) / 2)] / 1024 }'; }
printf '\npeak resident memory (MiB, median; whole process, training then inference):\n'
for d in $depths; do
  printf '  resnet%-4s mfres %s   torch NCHW %s   torch NHWC %s\n' "$d" "$(median_mib "$tmp/rss-mfres-$d")" \
    "$(median_mib "$tmp/rss-torch-$d")" "$(median_mib "$tmp/rss-torchcl-$d")"
done
