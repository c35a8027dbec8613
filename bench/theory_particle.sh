#!/usr/bin/env bash
# Particle mean-field ResNet training steps/s: `mfres theory bench` against the PyTorch
# implementation of the same model and step (bench/theory_particle_torch.py), float64,
# same sizes, interleaved over several rounds. For each activation it prints min/median/max
# steps/s for both and the ratio of the medians.
#
#   bash bench/theory_particle.sh [ROUNDS] [extra flags for both, e.g. --act relu]
#
# Without --act in the flags it measures tanh and relu (ACTS="tanh relu"), interleaved per round.
# Environment: MFRES (default build/mfres), STEPS (200), ACTS, MFRES_THREADS (2: OpenMP threads =
# sample chunks for mfres), MFRES_BLAS_THREADS (1: the chunks already use both cores; PyTorch always
# gets 2 threads), OMP_WAIT_POLICY (passive, for both programs: on a shared machine, threads that
# spin while they wait steal the core their partner needs; set it to active to see that).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
shift || true
MFRES=${MFRES:-build/mfres}
STEPS=${STEPS:-200}
SIZES=(--L 16 --M 64 --d 16 --n 256)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
[ -x "$MFRES" ] || { echo "error: $MFRES not found; run 'make' (or set MFRES=path/to/mfres)" >&2; exit 1; }
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "error: /usr/bin/python3 cannot import torch" >&2; exit 1; }
read -r -a acts <<<"${ACTS:-tanh relu}"
for f in "$@"; do [ "$f" = --act ] && acts=(flags); done # the flags name the activation
declare -A c_runs t_runs
echo "L=16 M=64 d=16 n=256, $STEPS steps, mfres OMP_NUM_THREADS=${MFRES_THREADS:-2}, OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
for r in $(seq 1 "$ROUNDS"); do
  for a in "${acts[@]}"; do
    act=(); [ "$a" = flags ] || act=(--act "$a")
    c=$(OPENBLAS_NUM_THREADS=${MFRES_BLAS_THREADS:-1} OMP_NUM_THREADS=${MFRES_THREADS:-2} "$MFRES" theory bench \
        "${SIZES[@]}" --steps "$STEPS" "${act[@]}" "$@" | sed -n 's/^steps_per_s=\([0-9.]*\).*/\1/p')
    t=$(/usr/bin/python3 bench/theory_particle_torch.py "${SIZES[@]}" --steps "$STEPS" --threads 2 "${act[@]}" "$@" \
        | sed -n 's/^steps_per_s=\([0-9.]*\).*/\1/p')
    printf 'round %d %-8s mfres %8.2f steps/s   torch %8.2f steps/s\n' "$r" "$a" "$c" "$t"
    c_runs[$a]+="$c "; t_runs[$a]+="$t "
  done
done
for a in "${acts[@]}"; do
  python3 - "$a" "${c_runs[$a]}" "${t_runs[$a]}" <<'PY'
import statistics, sys
a = sys.argv[1] if sys.argv[1] != "flags" else "(--act from the flags)"
c = [float(v) for v in sys.argv[2].split()]
t = [float(v) for v in sys.argv[3].split()]
r = [x / y for x, y in zip(c, t)]
print(f"act {a}:")
for name, v in (("mfres", c), ("torch", t)):
    print(f"  {name:6s} steps/s  min {min(v):9.2f}  median {statistics.median(v):9.2f}  max {max(v):9.2f}")
print(f"  per-round ratio  min {min(r):.2f}x  median {statistics.median(r):.2f}x  max {max(r):.2f}x;"
      f"  ratio of medians (mfres / torch): {statistics.median(c) / statistics.median(t):.2f}x")
PY
done
