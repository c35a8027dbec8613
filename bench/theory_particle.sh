#!/usr/bin/env bash
# Particle mean-field ResNet training steps/s: `mfres theory bench` against the PyTorch
# implementation of the same model and step (bench/theory_particle_torch.py), float64,
# same sizes, interleaved over several rounds. Prints min/median/max steps/s for both
# and the ratio of the medians.
#
#   bash bench/theory_particle.sh [ROUNDS] [extra flags for both, e.g. --act relu]
#
# Environment: MFRES (default build/mfres), STEPS (200), MFRES_BLAS_THREADS (1: OpenBLAS
# on one thread is faster than two at these sizes; PyTorch always gets 2 threads).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
shift || true
MFRES=${MFRES:-build/mfres}
STEPS=${STEPS:-200}
SIZES=(--L 16 --M 64 --d 16 --n 256)
[ -x "$MFRES" ] || { echo "error: $MFRES not found; run 'make' (or set MFRES=path/to/mfres)" >&2; exit 1; }
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "error: /usr/bin/python3 cannot import torch" >&2; exit 1; }
c_runs=(); t_runs=()
for r in $(seq 1 "$ROUNDS"); do
  c=$(OPENBLAS_NUM_THREADS=${MFRES_BLAS_THREADS:-1} OMP_NUM_THREADS=2 "$MFRES" theory bench "${SIZES[@]}" --steps "$STEPS" "$@" \
      | sed -n 's/^steps_per_s=\([0-9.]*\).*/\1/p')
  t=$(/usr/bin/python3 bench/theory_particle_torch.py "${SIZES[@]}" --steps "$STEPS" --threads 2 "$@" \
      | sed -n 's/^steps_per_s=\([0-9.]*\).*/\1/p')
  printf 'round %d: mfres %8.2f steps/s   torch %8.2f steps/s\n' "$r" "$c" "$t"
  c_runs+=("$c"); t_runs+=("$t")
done
python3 - "${c_runs[*]}" "${t_runs[*]}" <<'PY'
import statistics, sys
c = [float(v) for v in sys.argv[1].split()]
t = [float(v) for v in sys.argv[2].split()]
for name, v in (("mfres", c), ("torch", t)):
    print(f"{name:6s} steps/s  min {min(v):9.2f}  median {statistics.median(v):9.2f}  max {max(v):9.2f}")
print(f"ratio of medians (mfres / torch): {statistics.median(c) / statistics.median(t):.2f}x")
PY
