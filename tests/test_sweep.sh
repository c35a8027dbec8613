#!/usr/bin/env bash
# End-to-end checks of recipes, `mfres sweep`, the run store, `mfres report`
# and `mfres plot`: tiny Fashion-MNIST runs (seconds), and a hand-written sweep
# root whose Table 1 is known in advance.
set -u
cd "$(dirname "$0")/.."
MFRES=${MFRES_BUILD:-build}/mfres
PY=/usr/bin/python3
. tests/lib.sh  # tmp, fails, check, expect_exit (the cd above put us at the top)
tree_sum() { (cd "$1" && find . -type f ! -name '*.png' -print0 | sort -z | xargs -0 md5sum) ; }
json() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

fm=(--data fashion-mnist --train-limit 512 --test-limit 256 --batch 64 --threads 1 --quiet)

# ---- recipes ----
expect_exit 2 "unknown recipe is named" "unknown recipe 'p2-cifar10'" $MFRES train --recipe p2-cifar10
expect_exit 2 "sweep: unknown recipe" "unknown recipe 'x'" $MFRES sweep --root "$tmp/r0" --recipe x
$MFRES sweep --root "$tmp/r0" --status --epochs 2 --recipe p1-cifar10 >"$tmp/out" 2>&1
grep -q "to start (160 epochs)" "$tmp/out"; check "a recipe after --epochs overrides it" $?
$MFRES sweep --root "$tmp/r0" --status --recipe p1-cifar10 --epochs 2 >"$tmp/out" 2>&1
grep -q "to start (2 epochs)" "$tmp/out" && [ ! -e "$tmp/r0" ]; check "--epochs after a recipe overrides it; --status writes nothing" $?
$MFRES train --recipe p1-cifar10 "${fm[@]}" --model resnet8 --epochs 1 --out "$tmp/recipe" >/dev/null 2>&1
"$PY" - "$tmp/recipe/config.json" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1]))
want = {"recipe": "p1-cifar10", "milestones": [80, 120], "weight_decay": 1e-4, "epochs": 1, "batch": 64,
        "lr": 0.1, "momentum": 0.9, "schedule": "multistep", "augment": True, "flip": True, "data": "fashion-mnist",
        "warmup_steps": 0}
bad = {k: (d.get(k), v) for k, v in want.items() if d.get(k) != v}
if bad:
    print("config.json, found vs wanted:", bad)
sys.exit(1 if bad else 0)
PYEOF
check "config.json shows the recipe and every flag it set, with the overrides" $?
$MFRES train --model resnet110 --recipe he-cifar10 "${fm[@]}" --train-limit 64 --test-limit 64 --epochs 1 --out "$tmp/he110" >/dev/null 2>&1
$MFRES train --recipe he-cifar10 "${fm[@]}" --model resnet8 --epochs 1 --out "$tmp/he8" >/dev/null 2>&1
[ "$(json "$tmp/he110/config.json" '["warmup_steps"]')" = 400 ] && [ "$(json "$tmp/he110/config.json" '["warmup_lr"]')" = 0.01 ] &&
  [ "$(json "$tmp/he8/config.json" '["warmup_steps"]')" = 0 ] && [ "$(json "$tmp/he8/config.json" '["milestones"]')" = "[82, 123]" ]
check "he-cifar10: the 0.01 warm-up for ResNet-110, not for ResNet-8" $?
# Warm-up: an epoch (8 steps) at 0.01, then 0.1, trains exactly like an epoch at --lr 0.01 resumed at --lr 0.1.
$MFRES train "${fm[@]}" --model resnet8 --schedule multistep --lr 0.1 --warmup-steps 8 --warmup-lr 0.01 --epochs 2 --out "$tmp/wu" >/dev/null 2>&1
$MFRES train "${fm[@]}" --model resnet8 --schedule multistep --lr 0.01 --epochs 1 --out "$tmp/nowu" >/dev/null 2>&1
$MFRES train "${fm[@]}" --model resnet8 --schedule multistep --lr 0.1 --epochs 2 --resume --allow-change lr --out "$tmp/nowu" >/dev/null 2>&1
[ -s "$tmp/wu/model.safetensors" ] && cmp -s "$tmp/wu/model.safetensors" "$tmp/nowu/model.safetensors"
check "warm-up steps run at --warmup-lr, and only those" $?

# ---- sweep: usage errors ----
expect_exit 2 "sweep: unknown model" "6n+2" $MFRES sweep --root "$tmp/bad" --models resnet20,resnet21 "${fm[@]}"
expect_exit 2 "sweep: unknown model name" "resnetN" $MFRES sweep --root "$tmp/bad" --models vgg16 "${fm[@]}"
expect_exit 2 "sweep: unknown mode" "meanfield or vanilla" $MFRES sweep --root "$tmp/bad" --modes vanilla,dropout "${fm[@]}"
expect_exit 2 "sweep: --seed belongs to the sweep" "\-\-seed is set by the sweep" $MFRES sweep --root "$tmp/bad" --seed 3
expect_exit 2 "sweep: --root required" "\-\-root" $MFRES sweep "${fm[@]}"
[ ! -e "$tmp/bad" ]; check "usage errors create nothing" $?

# ---- sweep: runs, skips, resumes ----
grid=(--models resnet20 --modes vanilla,meanfield "${fm[@]}" --epochs 2 --schedule multistep --milestones 1)
$MFRES sweep --root "$tmp/A" --seeds 0,1 "${grid[@]}" >"$tmp/A.out" 2>&1; rcA=$?
[ $rcA -eq 0 ] && grep -q "4 runs trained now, 0 failed" "$tmp/A.out" && [ -s "$tmp/A/sweep.json" ] && [ -s "$tmp/A/runs.sqlite" ] &&
  [ "$(cat "$tmp"/A/resnet20-*-s*/metrics.jsonl | wc -l)" -eq 8 ]
check "sweep trains every point of the grid (4 runs x 2 epochs)" $?
runs_sum() { tree_sum "$1" | grep -v -e runs.sqlite -e sweep.json -e report; }
runs_sum "$tmp/A" >"$tmp/A.runs"
$MFRES sweep --root "$tmp/A" --seeds 0,1 "${grid[@]}" --threads 2 >"$tmp/A2.out" 2>&1
grep -q "4 finished, 0 stopped, 0 to start" "$tmp/A2.out" && grep -q "0 runs trained now" "$tmp/A2.out" &&
  diff <(runs_sum "$tmp/A") "$tmp/A.runs" >/dev/null
check "a second call (other --threads) skips the finished runs and changes none of their files" $?
tree_sum "$tmp/A" >"$tmp/A.sum"
# Stop every run of B in epoch 2 (a NaN at step 12 of 8-step epochs), then restart the sweep.
expect_exit 1 "sweep: a failing run is reported, the others go on" "global step 12" \
  $MFRES sweep --root "$tmp/B" --seeds 0 "${grid[@]}" --inject-nan-step 12
grep -q "0 runs trained now, 2 failed" "$tmp/out"; check "sweep counts the failed runs" $?
head -1 "$tmp/B/resnet20-meanfield-s0/metrics.jsonl" >"$tmp/B.line1"
$MFRES sweep --root "$tmp/B" --seeds 0 "${grid[@]}" >"$tmp/B.out" 2>&1
grep -q "0 finished, 2 stopped" "$tmp/B.out" && grep -q "resnet20-meanfield-s0: resuming after epoch 1 of 2" "$tmp/B.out" &&
  [ "$(head -1 "$tmp/B/resnet20-meanfield-s0/metrics.jsonl")" = "$(cat "$tmp/B.line1")" ]
check "a restarted sweep says where it stands and resumes the stopped runs (epoch 1 kept, timing included)" $?
cmp -s "$tmp/A/resnet20-meanfield-s0/model.safetensors" "$tmp/B/resnet20-meanfield-s0/model.safetensors" &&
  cmp -s "$tmp/A/resnet20-vanilla-s0/model.safetensors" "$tmp/B/resnet20-vanilla-s0/model.safetensors"
check "resumed runs end bit-identical to unbroken ones" $?

# A root from before --device and --precision (its JSON lacks both keys) is the same grid on the CPU in fp32.
cp -r "$tmp/A" "$tmp/old"
sed -i -e '/"device"/d' -e '/"precision"/d' "$tmp/old/sweep.json" "$tmp"/old/resnet20-*/config.json
! grep -q '"device"' "$tmp/old/sweep.json" "$tmp"/old/resnet20-*/config.json &&
  $MFRES sweep --root "$tmp/old" --seeds 0,1 "${grid[@]}" >"$tmp/old.out" 2>&1 && grep -q "4 finished, 0 stopped" "$tmp/old.out"
check "a sweep root written before --device existed is still this grid's" $?
cp -r "$tmp/A" "$tmp/new"  # report rebuilds a root's store: A's files stay as the checks below expect
$MFRES report "$tmp/new" > "$tmp/A.report" 2>&1 && $MFRES report "$tmp/old" > "$tmp/old.report" 2>&1 &&
  diff <(sed -n '/^Configurations/,$p' "$tmp/A.report") <(sed -n '/^Configurations/,$p' "$tmp/old.report") >/dev/null &&
  ! grep -q '"device"\|"precision"' "$tmp/A.report"
check "report: the same configuration for runs with and without device and precision (cpu and fp32 are what absence meant)" $?

# ---- sweep: bad roots ----
expect_exit 2 "another grid's root is refused, naming the root and the flag" "$tmp/A holds the runs of another grid.*lr is 0.1 there, 0.05 here" \
  $MFRES sweep --root "$tmp/A" --seeds 0,1 "${grid[@]}" --lr 0.05
diff <(tree_sum "$tmp/A") "$tmp/A.sum" >/dev/null; check "  ... and nothing in it changes (sweep.json, store, runs)" $?
mkdir -p "$tmp/plain"; cp -r "$tmp/recipe" "$tmp/plain/run1"
expect_exit 2 "a directory of runs without sweep.json is refused" "no sweep.json" $MFRES sweep --root "$tmp/plain" "${grid[@]}"
cp -r "$tmp/A" "$tmp/C"
sed -i '2s/.*/{"epoch": 2, "lr": 0.01, "train_loss": 0.5, "test_/' "$tmp/C/resnet20-vanilla-s1/metrics.jsonl"
tree_sum "$tmp/C" >"$tmp/C.sum"
expect_exit 1 "a corrupt metrics.jsonl stops the sweep, naming file and line" "C/resnet20-vanilla-s1/metrics.jsonl:2" \
  $MFRES sweep --root "$tmp/C" --seeds 0,1,2 "${grid[@]}"
expect_exit 1 "report: the same corrupt run is named" "C/resnet20-vanilla-s1/metrics.jsonl:2" $MFRES report "$tmp/C"
expect_exit 1 "plot: the same corrupt run is named" "C/resnet20-vanilla-s1/metrics.jsonl:2" $MFRES plot "$tmp/C"
diff <(tree_sum "$tmp/C") "$tmp/C.sum" >/dev/null && [ ! -e "$tmp/C/resnet20-vanilla-s2" ]; check "  ... and nothing is written (no run, no store, no report)" $?
cp -r "$tmp/A" "$tmp/D"; rm "$tmp/D/resnet20-meanfield-s1/config.json"
expect_exit 1 "a run directory without config.json is named" "D/resnet20-meanfield-s1: a run directory without config.json" \
  $MFRES sweep --root "$tmp/D" --seeds 0,1 "${grid[@]}"
cp -r "$tmp/A" "$tmp/E"; printf '{"model": "resnet20", ' >"$tmp/E/resnet20-meanfield-s0/config.json"
expect_exit 1 "a cut-short config.json is named" "E/resnet20-meanfield-s0/config.json: not valid JSON" $MFRES report "$tmp/E"
cp -r "$tmp/A" "$tmp/F"; head -c 100 "$tmp/A/resnet20-vanilla-s0/state.safetensors" >"$tmp/F/resnet20-vanilla-s0/state.safetensors"
expect_exit 1 "a cut-short state.safetensors is named" "F/resnet20-vanilla-s0/state.safetensors" $MFRES store "$tmp/F"

# ---- the run store ----
q() { sqlite3 "$tmp/A/runs.sqlite" "$1"; }
if command -v sqlite3 >/dev/null; then
  [ "$(q 'SELECT count(*) FROM runs WHERE finished')" = 4 ] && [ "$(q 'SELECT count(*) FROM epochs')" = 8 ] &&
    [ "$(q "SELECT count(*) FROM tau")" = 24 ] &&
    [ "$(q "SELECT count(*) FROM (SELECT run_id, epoch, stage, sum(position) s, count(*) c FROM tau GROUP BY 1, 2, 3) WHERE s != 3 OR c != 2")" = 0 ] &&
    [ "$(q "SELECT value FROM config WHERE key = 'train_limit' LIMIT 1")" = 512 ]
  check "store: runs, epochs, tau (a permutation of positions per stage) and config rows" $?
  "$PY" - "$tmp/A" <<'PYEOF'
import json, sqlite3, sys, os
root = sys.argv[1]
db = sqlite3.connect(os.path.join(root, "runs.sqlite"))
bad = 0
for name, err, in db.execute("SELECT name, final_test_error FROM runs"):
    last = [json.loads(l) for l in open(os.path.join(root, name, "metrics.jsonl"))][-1]
    bad += (1 - last["test_acc"]) != err
for name, epoch, stage, block, tau in db.execute("SELECT r.name, t.epoch, t.stage, t.block, t.tau FROM tau t JOIN runs r USING (run_id)"):
    m = [json.loads(l) for l in open(os.path.join(root, name, "metrics.jsonl"))][epoch - 1]
    bad += m["tau"][stage - 1][block - 1] != tau
sys.exit(1 if bad else 0)
PYEOF
  check "store: final test error and every tau equal the run directories'" $?
  rm "$tmp/A/runs.sqlite"; $MFRES store "$tmp/A" >/dev/null && [ "$(q 'SELECT count(*) FROM runs')" = 4 ]
  check "store: rebuilt from the run directories on demand" $?
else
  echo "FAIL sqlite3 (the client) is missing: run scripts/setup.sh"; fails=$((fails+1))
fi

# ---- report: a hand-written root with a known Table 1 ----
mkrun() { # dir model data mode seed epochs test_acc...
  local d=$1 model=$2 data=$3 mode=$4 seed=$5 epochs=$6; shift 6
  mkdir -p "$d"
  printf '{"recipe": "p1-cifar10", "data": "%s", "model": "%s", "block": "postact", "mode": "%s", "tau_init": "unit", "tau_lr_mult": 1, "seed": %s, "epochs": %s, "lr": 0.1, "threads": %s}\n' \
    "$data" "$model" "$mode" "$seed" "$epochs" "$seed" >"$d/config.json"
  local e=0; : >"$d/metrics.jsonl"
  for acc in "$@"; do e=$((e+1))
    printf '{"epoch": %d, "lr": 0.1, "train_loss": 1, "train_acc": 0.5, "test_loss": 1, "test_acc": %s}\n' $e "$acc" >>"$d/metrics.jsonl"
  done
}
R="$tmp/R"
# Best epochs (0.99) come before the final ones: the report must take the final epoch.
mkrun "$R/v0" resnet20 cifar10 vanilla 0 2 0.99 0.91; mkrun "$R/v1" resnet20 cifar10 vanilla 1 2 0.99 0.92
mkrun "$R/v2" resnet20 cifar10 vanilla 2 2 0.99 0.90; mkrun "$R/m0" resnet20 cifar10 meanfield 0 2 0.99 0.93
mkrun "$R/m1" resnet20 cifar10 meanfield 1 2 0.99 0.92; mkrun "$R/m2" resnet20 cifar10 meanfield 2 2 0.99 0.91
mkrun "$R/m3" resnet20 cifar10 meanfield 3 2 0.50
mkrun "$R/x0" resnet8 fashion-mnist vanilla 0 1 0.75
$MFRES report "$R" >"$tmp/report.md" 2>"$tmp/report.err"; rc=$?
[ $rc -eq 0 ] && grep -qF "| ResNet-20 | cifar10 | 9.00 ± 1.00 (3) | 8.75 | 8.00 ± 1.00 (3) +1 unfinished | 8.19 | +1.00 ± 0.82 | +0.56 | [1] |" "$tmp/report.md"
check "report: final-epoch mean ± std (n), P1's figures, the gain, unfinished runs counted apart" $?
grep -qF "| ResNet-8 | fashion-mnist | 25.00 (1) | — | — | — | — | — | [2] |" "$tmp/report.md" &&
  [ "$(grep -c '^| ResNet' "$tmp/report.md")" -eq 2 ] && grep -q '"recipe": "p1-cifar10"' "$tmp/report.md"
check "report: one row per network, networks beyond P1 without a P1 figure, the configuration shown" $?
"$PY" - "$R/report.csv" <<'PYEOF'
import csv, sys
rows = {r["network"]: r for r in csv.DictReader(open(sys.argv[1]))}
r = rows["resnet20"]
ok = (abs(float(r["vanilla_mean"]) - 9) < 1e-9 and abs(float(r["vanilla_std"]) - 1) < 1e-9 and r["vanilla_n"] == "3"
      and abs(float(r["meanfield_mean"]) - 8) < 1e-9 and r["meanfield_unfinished"] == "1" and r["p1_vanilla"] == "8.7500"
      and r["p1_meanfield"] == "8.1900" and abs(float(r["gain"]) - 1) < 1e-9 and r["same_configuration"] == "1")
sys.exit(0 if ok else 1)
PYEOF
check "report: the CSV carries the same numbers" $?
$MFRES report "$R" --csv | head -1 | grep -q '^network,block,data'; check "report --csv prints the CSV" $?
sed -i 's/"lr": 0.1,/"lr": 0.2,/' "$R/m1/config.json"
$MFRES report "$R" | grep "ResNet-20" | grep -q "mixed: the arms are not comparable"
check "report: arms trained under different configurations are flagged" $?

# ---- plot ----
$MFRES plot "$tmp/A" --out "$tmp/plots" >"$tmp/out" 2>&1; rc=$?
csv="$tmp/plots/test_error_resnet20-fashion-mnist.csv"
[ $rc -eq 0 ] && [ -s "$csv" ] && [ -s "$tmp/plots/tau_resnet20-meanfield-s0.csv" ] && [ -s "$tmp/plots/order_resnet20-meanfield-s1.csv" ]
check "plot: test error per network, tau and block order per mean-field run" $?
"$PY" - "$tmp/A" "$csv" <<'PYEOF'
import csv, json, sys, os
root, path = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
def err(name, e): return 100 * (1 - [json.loads(l) for l in open(os.path.join(root, name, "metrics.jsonl"))][e]["test_acc"])
ok = len(rows) == 2
for e, r in enumerate(rows):
    v = [err(f"resnet20-vanilla-s{s}", e) for s in (0, 1)]
    m = [err(f"resnet20-meanfield-s{s}", e) for s in (0, 1)]
    arms = {}
    for a in ("arm1", "arm2"):
        arms[a] = (float(r[a + "_mean"]), float(r[a + "_min"]), float(r[a + "_max"]))
    want = sorted([(sum(v) / 2, min(v), max(v)), (sum(m) / 2, min(m), max(m))])
    got = sorted(arms.values())
    ok &= all(abs(x - y) < 1e-3 for g, w in zip(got, want) for x, y in zip(g, w))
sys.exit(0 if ok else 1)
PYEOF
check "plot: the curve is the mean over seeds and the band their range" $?
if command -v gnuplot >/dev/null; then
  n=0; for f in "$tmp"/plots/*.png; do [ "$(head -c 4 "$f" | tail -c 3)" = PNG ] && n=$((n+1)); done
  [ "$n" -eq 5 ]; check "plot: 5 PNG files (gnuplot present)" $?
fi
expect_exit 1 "plot: a path that holds no runs is named" "$tmp/empty: neither a run directory" bash -c "mkdir -p '$tmp/empty' && $MFRES plot '$tmp/empty'"

echo "$fails failed"
[ "$fails" -eq 0 ]
