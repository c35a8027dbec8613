#!/usr/bin/env bash
# End-to-end checks of the mfres command line: usage errors (exit 2, naming the
# flag), runtime errors (exit 1, naming the file or step), a NaN stop that
# leaves the last good model in place, bit-for-bit reproducibility, eval of a
# saved model, and that a small ResNet learns Fashion-MNIST.
set -u
cd "$(dirname "$0")/.."
MFRES=${MFRES_BUILD:-build}/mfres
. tests/lib.sh  # tmp, fails, check, expect_exit (the cd above put us at the top)

expect_exit 2 "depth not 6n+2" "6n+2" $MFRES train --model resnet21
expect_exit 2 "negative lr" "\-\-lr" $MFRES train --lr -0.1
expect_exit 2 "batch 0" "\-\-batch" $MFRES train --batch 0
expect_exit 2 "unknown flag" "unknown flag '--frobnicate'" $MFRES train --frobnicate
expect_exit 2 "unknown data set" "fashion-mnist, mnist" $MFRES train --data imagenet
expect_exit 2 "bad block" "postact or preact" $MFRES train --block middle
expect_exit 2 "unknown command" "unknown command" $MFRES fly
expect_exit 2 "bench bad input" "\-\-input" $MFRES bench --input 3x30
# A binary built for instructions this CPU lacks says so before it can crash (simulated: the check's testing aid).
if grep -qw avx2 /proc/cpuinfo; then
  expect_exit 1 "a CPU lacking the build's ISA is named" "instructions this CPU lacks: .*avx2" \
    env MFRES_PRETEND_CPU_LACKS=avx2 $MFRES --help
fi
expect_exit 1 "missing data dir" "/nonexistent/train-images" $MFRES train --data mnist:/nonexistent
mkdir -p "$tmp/bad"; head -c 5000 /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz > "$tmp/bad/train-images-idx3-ubyte.gz"
cp /usr/share/datasets/fashion-mnist/{train-labels,t10k-images,t10k-labels}* "$tmp/bad/"
expect_exit 1 "truncated data file" "$tmp/bad/train-images-idx3-ubyte.gz" $MFRES train --data fashion-mnist:"$tmp/bad"
printf 'garbage' > "$tmp/bad.safetensors"
expect_exit 1 "corrupt model file" "bad.safetensors" $MFRES eval --model-file "$tmp/bad.safetensors"
expect_exit 1 "missing model file" "nothere.safetensors" $MFRES eval --model-file "$tmp/nothere.safetensors"

common=(--model resnet14 --batch 64 --train-limit 768 --test-limit 512 --threads 2 --quiet)
# Reproducibility: same seed and threads => the same metrics and model, bit for bit.
$MFRES train "${common[@]}" --epochs 2 --seed 5 --out "$tmp/a" >/dev/null 2>&1
$MFRES train "${common[@]}" --epochs 2 --seed 5 --out "$tmp/b" >/dev/null 2>&1
strip() { sed -E 's/"(images_per_s|epoch_seconds)": [0-9.e+-]+//g' "$1"; }
[ -s "$tmp/a/metrics.jsonl" ] && [ "$(strip "$tmp/a/metrics.jsonl")" = "$(strip "$tmp/b/metrics.jsonl")" ]
check "same seed, same metrics" $?
cmp -s "$tmp/a/model.safetensors" "$tmp/b/model.safetensors"; check "same seed, same model bits" $?
$MFRES train "${common[@]}" --epochs 2 --seed 6 --out "$tmp/c" >/dev/null 2>&1
c_rc=$?
[ "$c_rc" -eq 0 ] && [ -s "$tmp/a/model.safetensors" ] && [ -s "$tmp/c/model.safetensors" ] &&
  ! cmp -s "$tmp/a/model.safetensors" "$tmp/c/model.safetensors"
check "another seed, another model (run exit $c_rc)" $?
grep -q '"tau": \[\[' "$tmp/a/metrics.jsonl" && grep -q '"order": \[\[' "$tmp/a/metrics.jsonl"; check "metrics carry tau and order" $?
grep -q '"mode": "meanfield"' "$tmp/a/config.json"; check "config.json resolved" $?

# NaN at global step 14 (epoch 2 of 12-step epochs): exit 1 naming the step; epoch 1's model stays intact.
# (multistep: with a cosine schedule the first epoch of a 1- and a 2-epoch run differ)
common+=(--schedule multistep)
$MFRES train "${common[@]}" --epochs 1 --seed 5 --out "$tmp/one" >/dev/null 2>&1
expect_exit 1 "NaN loss stops with the step" "global step 14" $MFRES train "${common[@]}" --epochs 2 --seed 5 --out "$tmp/nan" --inject-nan-step 14
cmp -s "$tmp/one/model.safetensors" "$tmp/nan/model.safetensors"; check "NaN stop keeps the last good model" $?
[ -s "$tmp/nan/model.safetensors" ] && [ -z "$(ls -A "$tmp/nan" | grep '\.tmp\.')" ]
check "no temporary files left behind" $?

# Resume: a run stopped in epoch 2 (NaN) and resumed finishes bit-identical to an unbroken run.
$MFRES train "${common[@]}" --epochs 3 --seed 5 --out "$tmp/full" >/dev/null 2>&1
$MFRES train "${common[@]}" --epochs 3 --seed 5 --out "$tmp/res" --inject-nan-step 20 >/dev/null 2>&1
$MFRES train "${common[@]}" --epochs 3 --seed 5 --out "$tmp/res" --resume >/dev/null 2>&1
cmp -s "$tmp/full/model.safetensors" "$tmp/res/model.safetensors" && [ -s "$tmp/res/metrics.jsonl" ] &&
  [ "$(strip "$tmp/full/metrics.jsonl")" = "$(strip "$tmp/res/metrics.jsonl")" ]
check "resume after a stop is bit-identical to an unbroken run" $?
cp "$tmp/res/config.json" "$tmp/config.before"
cp "$tmp/res/state.safetensors" "$tmp/state.before"
# Every flag that changes the result is refused on --resume, naming the setting (exit 2).
mkdir -p "$tmp/fm-copy" && cp /usr/share/datasets/fashion-mnist/* "$tmp/fm-copy/"
for change in "seed 6" "lr 0.05" "momentum 0.8" "wd 5e-4" "nesterov" "schedule cosine" "milestones 2" \
    "gamma 0.5" "tau-lr-mult 2" "tau-init grid" "mode vanilla" "block preact" "batch 32" "train-limit 640" \
    "test-limit 256" "augment" "flip" "threads 1" "data fashion-mnist:$tmp/fm-copy"; do
  key=${change%% *}
  # shellcheck disable=SC2086
  expect_exit 2 "resume with --$change is refused" "$key: the run has" \
    $MFRES train "${common[@]}" --epochs 4 --seed 5 --out "$tmp/res" --resume --${change/ /=}
done
cmp -s "$tmp/config.before" "$tmp/res/config.json" && cmp -s "$tmp/state.before" "$tmp/res/state.safetensors"
check "a refused resume leaves the run's files alone" $?
expect_exit 2 "resume of a finished run is refused" "has finished: 3 of 3 epochs" \
  $MFRES train "${common[@]}" --epochs 3 --seed 5 --out "$tmp/res" --resume
expect_exit 2 "--allow-change names real settings" "'speed' is not a setting" \
  $MFRES train "${common[@]}" --epochs 4 --seed 5 --out "$tmp/res" --resume --allow-change lr,speed
# An allowed change and raised epochs go on, and config.json's history says what changed.
$MFRES train "${common[@]}" --epochs 4 --seed 5 --lr 0.05 --out "$tmp/res" --resume --allow-change lr >/dev/null 2>&1
check "resume with an allowed change and more epochs runs" $?
# Two resumes of this run so far: after the NaN stop in epoch 2 (nothing changed), and this one.
grep -q '"history": \[{"resumed_after_epoch": 1, "step": 12, "changed": {}}, {"resumed_after_epoch": 3, "step": 36, "changed": {"lr": \["0.10000000000000001", "0.050000000000000003"\], "epochs": \[3, 4\]}}\]' "$tmp/res/config.json" &&
  grep -q '"lr": 0.05,' "$tmp/res/config.json" && [ "$(wc -l < "$tmp/res/metrics.jsonl")" -eq 4 ]
r=$?; check "config.json records the resume history ($(grep history "$tmp/res/config.json"))" $r

# Run directories: never overwritten, never shared, never resumed from nothing.
cp "$tmp/a/model.safetensors" "$tmp/a.model"
expect_exit 2 "training into a run is refused" "already holds a run.*--resume.*--overwrite" \
  $MFRES train "${common[@]}" --epochs 1 --seed 5 --out "$tmp/a"
cmp -s "$tmp/a.model" "$tmp/a/model.safetensors"; check "a refused run leaves the old run alone" $?
expect_exit 2 "resume of a missing directory" "does not exist" $MFRES train "${common[@]}" --out "$tmp/none" --resume
mkdir -p "$tmp/empty"
expect_exit 2 "resume without a state file" "holds no training state" \
  $MFRES train "${common[@]}" --out "$tmp/empty" --resume
(
  exec 9>"$tmp/a/train.lock"
  flock -n 9 || exit 3
  $MFRES train "${common[@]}" --seed 5 --out "$tmp/a" --resume --epochs 3 >"$tmp/out" 2>"$tmp/err"
  echo $? > "$tmp/lock_rc"
)
[ "$(cat "$tmp/lock_rc" 2>/dev/null)" = 1 ] && grep -q "in use: another mfres process" "$tmp/err"
r=$?; check "a second process on one run directory is refused ($(head -c 200 "$tmp/err"))" $r
python3 - "$tmp/res/state.safetensors" "$tmp/state.bad" <<'PY'
import sys
blob = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(blob.replace(b'"epochs_done":"4"', b'"epochs_done":"x"', 1))
PY
mkdir -p "$tmp/badstate" && cp "$tmp/res/"{config.json,metrics.jsonl,model.safetensors} "$tmp/badstate/" &&
  cp "$tmp/state.bad" "$tmp/badstate/state.safetensors"
expect_exit 1 "a non-numeric epoch count is an error, not 0" "'epochs_done' should be an integer" \
  $MFRES train "${common[@]}" --epochs 5 --seed 5 --out "$tmp/badstate" --resume
# The default run directory names the seed; --overwrite starts over and clears a killed run's temporaries;
# more threads than cores are capped with a warning.
mkdir -p "$tmp/cwd"
mfres_abs="$(cd "$(dirname "$MFRES")" && pwd)/mfres"
tiny=(--model resnet8 --batch 64 --train-limit 64 --test-limit 64 --quiet --epochs 1)
(cd "$tmp/cwd" && "$mfres_abs" train "${tiny[@]}" --seed 3 --threads 1000 >/dev/null 2>"$tmp/err")
run3="$tmp/cwd/runs/fashion-mnist-resnet8-postact-meanfield-seed3"
[ -s "$run3/model.safetensors" ] && grep -q "1000 threads asked for" "$tmp/err" &&
  grep -q "\"threads\": $(nproc)," "$run3/config.json"
check "default run directory names the seed; threads capped to the cores" $?
touch "$run3/model.safetensors.tmp.424242" "$run3/metrics.jsonl.tmp.77"
(cd "$tmp/cwd" && "$mfres_abs" train "${tiny[@]}" --seed 3 --threads 2 --overwrite >/dev/null 2>&1)
[ $? -eq 0 ] && [ -s "$run3/model.safetensors" ] && [ -z "$(ls -A "$run3" | grep '\.tmp\.')" ] &&
  grep -q '"threads": 2,' "$run3/config.json"
check "--overwrite starts over and removes stale temporary files" $?

# eval reproduces the test accuracy recorded in training (same test images, running statistics).
acc_train=$(tail -1 "$tmp/a/metrics.jsonl" | sed -E 's/.*"test_acc": ([0-9.]+).*/\1/')
$MFRES eval --model-file "$tmp/a/model.safetensors" --batch 64 --limit 512 --threads 2 > "$tmp/eval.txt" 2>&1
acc_eval=$(sed -n -E 's/.*test_acc=([0-9.]+).*/\1/p' "$tmp/eval.txt")
awk -v a="${acc_train:-x}" -v b="${acc_eval:-y}" 'BEGIN { exit !(a != "x" && b != "y" && a - b < 1e-4 && b - a < 1e-4) }'
check "eval of the saved model reproduces training's test accuracy ($acc_train vs ${acc_eval:-none})" $?

# Learning: ResNet-8 on 12,800 Fashion-MNIST images for 400 steps beats 80% test accuracy.
$MFRES train --model resnet8 --batch 64 --train-limit 12800 --test-limit 2000 --epochs 2 --threads 2 --quiet \
  --out "$tmp/learn" > "$tmp/learn.txt" 2>&1
acc=$(sed -E -n 's/.*test_acc=([0-9.]+).*/\1/p' "$tmp/learn.txt")
echo "     learned: test accuracy ${acc:-none} after 400 steps (needs > 0.80)"
awk -v a="${acc:-0}" 'BEGIN { exit !(a > 0.80) }'; check "a small ResNet learns Fashion-MNIST" $?

# No convolution may run on oneDNN's reference kernel (hundreds of times slower than its
# jit kernels; a layout it has no kernel for falls there silently). bench --profile names
# every convolution's implementation, training and inference, for the native ISA and AVX2.
for isa in "" AVX2; do
  for shape in "--input 1x28x28 --batch 64" "--input 3x32x32 --batch 32 --block preact"; do
    DNNL_MAX_CPU_ISA=$isa $MFRES bench --model resnet14 $shape --iters 1 --warmup 0 --threads 2 --profile \
      > "$tmp/prof.txt" 2>&1
    ! grep -q " ref:" "$tmp/prof.txt" && grep -q "conv bwd weights (stem)" "$tmp/prof.txt"
    rc=$?
    check "no reference kernels (${isa:-native}, $shape)$(grep -m1 " ref:" "$tmp/prof.txt" | tr -s ' ')" $rc
  done
done

echo "$fails failures"
[ "$fails" -eq 0 ]
