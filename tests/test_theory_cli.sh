#!/usr/bin/env bash
# End-to-end checks of `mfres theory`: the lab III experiments write their table, CSV and plot;
# bad input is a usage error naming the flag (exit 2); a step count that overflows is an error;
# a diverged run exits 1 and is never reported as "bound held"; a non-finite matrix entry names
# the file; a failing gnuplot does not fail a run whose CSV was written; the --help defaults are
# the code's (a run with them spelled out equals the default run); saved particles continue a run
# bit for bit and numpy reads them.
set -u
cd "$(dirname "$0")/.."
MFRES=${MFRES_BUILD:-build}/mfres
. tests/lib.sh  # tmp, fails, check, expect_exit (the cd above put us at the top)
have_gnuplot=0; command -v gnuplot >/dev/null 2>&1 && have_gnuplot=1
outputs() { # dir, files...: every file exists and is non-empty; the PNG too when gnuplot is installed
  local dir=$1; shift
  for f in "$@"; do
    case $f in *.png) [ $have_gnuplot -eq 1 ] || continue ;; esac
    [ -s "$dir/$f" ] || return 1
  done
}

# ---- lab III: the three experiments at small sizes ----
$MFRES theory birth-death --seeds 2 --time 20 --rate 1 --out "$tmp/bd" >"$tmp/bd.txt" 2>/dev/null
check "birth-death runs" $?
outputs "$tmp/bd" birth_death.csv birth_death_traj.csv birth_death.gp birth_death.png; check "birth-death writes CSV and plot" $?
check "birth-death table has every init and arm" "$( [ "$(grep -cE '^(usual|half-space|cluster) +(wasserstein|wfr|wfr-unbalanced) ' "$tmp/bd.txt")" -eq 9 ]; echo $?)"
check "birth-death CSV has 3 inits x 3 arms x 2 seeds" "$( [ "$(tail -n +2 "$tmp/bd/birth_death.csv" | wc -l)" -eq 18 ]; echo $?)"
# the conservative flow's masses leave uniformity from the usual init (ESS < 1) and Wasserstein's never do
check "birth-death masses move only under WFR" "$(awk -F, 'NR>1 && $2=="wasserstein" && $6!=1 {bad=1} NR>1 && $1=="usual" && $2=="wfr" && $6>0.99 {bad=1} END {exit bad}' "$tmp/bd/birth_death.csv"; echo $?)"

$MFRES theory expansion --L 1,2,8 --seeds 1 --out "$tmp/ex" >"$tmp/ex.txt" 2>/dev/null
check "expansion runs" $?
outputs "$tmp/ex" expansion.csv expansion_orders.csv expansion.gp expansion.png; check "expansion writes CSV and plot" $?
# the remainder orders in the branch scale: 2 for the ensemble, 3 with the second-order term
check "expansion remainder orders 2 and 3" "$(awk -F, '$1==8 {exit !($2>1.9 && $2<2.1 && $3>2.9 && $3<3.1)}' "$tmp/ex/expansion_orders.csv"; echo $?)"

$MFRES theory particle-limit --N 16,64,256,1024 --time 4 --seeds 2 --out "$tmp/pl" >"$tmp/pl.txt" 2>/dev/null
check "particle-limit runs" $?
outputs "$tmp/pl" particle_limit.csv particle_limit_traj.csv particle_limit.gp particle_limit.png; check "particle-limit writes CSV and plot" $?
grep -q "fitted rates" "$tmp/pl.txt"; check "particle-limit prints the fitted rate" $?

# ---- bad input ----
expect_exit 2 "negative birth-death rate" "\-\-rate" $MFRES theory birth-death --rate -1 --out "$tmp/x"
expect_exit 2 "birth-death with matrix units" "neuron" $MFRES theory birth-death --unit matrix --out "$tmp/x"
expect_exit 2 "expansion with matrix units" "neuron" $MFRES theory expansion --unit matrix --out "$tmp/x"
expect_exit 2 "particle count not a multiple of L" "multiples of --L" $MFRES theory particle-limit --N 16,30,64 --out "$tmp/x"
expect_exit 2 "particle counts not increasing" "increasing" $MFRES theory particle-limit --N 64,16,256 --out "$tmp/x"
expect_exit 2 "too few particle counts" "at least 3" $MFRES theory particle-limit --N 16,64 --out "$tmp/x"
expect_exit 2 "particle count out of range" "\-\-N values" $MFRES theory particle-limit --N 16,64,99999999 --out "$tmp/x"
expect_exit 1 "a birth rate that empties (or floods) the particle set" "lost its mass\|must be finite" \
  $MFRES theory birth-death --rate 1000000 --lr 5 --time 100 --seeds 1 --out "$tmp/x"
expect_exit 2 "step count overflow" "training steps; at most" $MFRES theory zero-loss --time 1e9 --lr 1e-12 --out "$tmp/x"
expect_exit 2 "--save outside train" "train" $MFRES theory ensemble --save "$tmp/p" --out "$tmp/x"

# ---- diverged runs ----
expect_exit 1 "a diverged particle run exits 1" "training diverged" \
  $MFRES theory zero-loss --lr 1e4 --time 1e5 --L 2 --M 4 --seeds 1 --out "$tmp/x"
expect_exit 1 "a diverged linear run exits 1" "diverged" $MFRES theory linear run --eta-c 100 --out "$tmp/lindiv"
grep -q "bound held" "$tmp/out"; check "a diverged linear run is not 'bound held'" "$((1 - $?))"
grep -q "bound not checked (the run diverged)" "$tmp/out"; check "a diverged linear run says so" $?
[ -s "$tmp/lindiv/run.csv" ]; check "a diverged linear run keeps its trace" $?

# ---- NaN in the transforms ----
printf '1,0\n0,nan\n0,0\n' >"$tmp/A.csv"
printf '1,0,0\n' >"$tmp/B.csv"
expect_exit 1 "NaN in A names the file" "A.csv: entry (row 2, column 2) is nan" \
  $MFRES theory linear run --d 2 --k 1 --a "$tmp/A.csv" --b "$tmp/B.csv" --out "$tmp/x"

# ---- a failing gnuplot costs the picture, not the run ----
mkdir -p "$tmp/bin"; printf '#!/bin/sh\nexit 3\n' >"$tmp/bin/gnuplot"; chmod +x "$tmp/bin/gnuplot"
expect_exit 0 "particle lab survives a failing gnuplot" "warning: no" \
  env PATH="$tmp/bin:$PATH" $MFRES theory ensemble --L 1,2 --seeds 1 --out "$tmp/gp1"
[ -s "$tmp/gp1/ensemble.csv" ]; check "particle lab CSV written despite gnuplot" $?
expect_exit 0 "linear lab survives a failing gnuplot" "warning: no" \
  env PATH="$tmp/bin:$PATH" $MFRES theory linear run --out "$tmp/gp2"
[ -s "$tmp/gp2/run.csv" ]; check "linear lab CSV written despite gnuplot" $?

# ---- the --help defaults are the code's ----
help_defaults() { # experiment: the flags after "Defaults:" in its --help, minus comments in parentheses
  $MFRES theory "$1" --help | tr '\n' ' ' | sed -n 's/.*Defaults: //p' | sed 's/ (.*//; s/\. .*//; s/\.$//; s/  */ /g'
}
for e in ensemble expansion birth-death adjoint sorted-tau; do
  flags=$(help_defaults "$e")
  if [ -z "$flags" ]; then check "$e --help states its defaults" 1; continue; fi
  $MFRES theory "$e" --out "$tmp/d1-$e" >"$tmp/d1.txt" 2>/dev/null && \
    $MFRES theory "$e" $flags --out "$tmp/d2-$e" >"$tmp/d2.txt" 2>/dev/null
  check "$e: the --help defaults ($flags) run" $?
  same=0
  for f in "$tmp/d1-$e"/*.csv; do cmp -s "$f" "$tmp/d2-$e/$(basename "$f")" || same=1; done
  check "$e: the --help defaults give the default results" $same
done
# linear: width's data and sweep defaults as --help states them
$MFRES theory linear width --quiet --out "$tmp/w1" >/dev/null 2>&1 && \
  $MFRES theory linear width --quiet --d 4 --k 2 --n 32 --kappa 1 --target-scale 0.001 --noise 0 --depth 2 \
    --steps 100 --eps 1e-6 --kappas 1,4,16,64,256 --transform gaussian --max-width 128 --out "$tmp/w2" >/dev/null 2>&1
check "linear width: the --help defaults run" $?
cmp -s "$tmp/w1/width.csv" "$tmp/w2/width.csv"; check "linear width: the --help defaults give the default results" $?

# ---- particles saved and continued ----
$MFRES theory train --time 10 --out "$tmp/tA" >"$tmp/tA.txt" 2>/dev/null && \
  $MFRES theory train --time 5 --out "$tmp/tB" >/dev/null 2>&1 && \
  $MFRES theory train --time 5 --load "$tmp/tB/particles" --out "$tmp/tC" >"$tmp/tC.txt" 2>/dev/null
check "train, save, load and continue" $?
check "a continued run equals an unbroken one bit for bit" \
  "$( [ -n "$(grep -o 'final_loss=.*' "$tmp/tA.txt")" ] && [ "$(grep -o 'final_loss=.*' "$tmp/tA.txt")" = "$(grep -o 'final_loss=.*' "$tmp/tC.txt")" ]; echo $?)"
if /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
  /usr/bin/python3 - "$tmp/tC/particles" <<'EOF'
import json, sys, numpy as np
d = sys.argv[1]
meta = json.load(open(d + "/particles.json"))
theta = np.load(d + "/theta.npy"); tau = np.load(d + "/tau.npy")
assert theta.shape == (meta["L"] * meta["M"], meta["P"]) and theta.dtype == np.float64, theta.shape
assert tau.shape == (meta["L"], 1) and np.all(np.diff(tau[:, 0]) > 0)
assert np.load(d + "/W2.npy").shape == (meta["d"], meta["d_in"]) and np.load(d + "/W1.npy").shape == (meta["k"], meta["d"])
EOF
  check "numpy reads the saved particles" $?
fi
expect_exit 1 "load from a directory without particles" "particles.json" $MFRES theory train --load "$tmp/nowhere" --out "$tmp/x"
expect_exit 1 "loaded particles that do not fit the data" "d_in = 4" $MFRES theory train --load "$tmp/tB/particles" --d 6 --out "$tmp/x"

echo "$fails failed"
[ "$fails" -eq 0 ]
