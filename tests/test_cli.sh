#!/usr/bin/env bash
# End-to-end checks of the mfres command line: usage errors (exit 2, naming the
# flag), runtime errors (exit 1, naming the file or step), a NaN stop that
# leaves the last good model in place, bit-for-bit reproducibility, eval of a
# saved model, and that a small ResNet learns Fashion-MNIST.
set -u
cd "$(dirname "$0")/.."
MFRES=${MFRES_BUILD:-build}/mfres
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # description, condition result
  if [ "$2" -eq 0 ]; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails+1)); fi
}
expect_exit() { # want, description, grep pattern for stderr, command...
  local want=$1 desc=$2 pattern=$3; shift 3
  "$@" >"$tmp/out" 2>"$tmp/err"; local got=$?
  if [ "$got" -eq "$want" ] && grep -q -- "$pattern" "$tmp/err"; then echo "ok   $desc"
  else echo "FAIL $desc (exit $got, want $want; stderr: $(head -c 300 "$tmp/err"))"; fails=$((fails+1)); fi
}

expect_exit 2 "depth not 6n+2" "6n+2" $MFRES train --model resnet21
expect_exit 2 "negative lr" "\-\-lr" $MFRES train --lr -0.1
expect_exit 2 "batch 0" "\-\-batch" $MFRES train --batch 0
expect_exit 2 "unknown flag" "unknown flag '--frobnicate'" $MFRES train --frobnicate
expect_exit 2 "unknown data set" "fashion-mnist, mnist" $MFRES train --data imagenet
expect_exit 2 "bad block" "postact or preact" $MFRES train --block middle
expect_exit 2 "unknown command" "unknown command" $MFRES fly
expect_exit 2 "bench bad input" "\-\-input" $MFRES bench --input 3x30
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
! cmp -s "$tmp/a/model.safetensors" "$tmp/c/model.safetensors"; check "another seed, another model" $?
grep -q '"tau": \[\[' "$tmp/a/metrics.jsonl" && grep -q '"order": \[\[' "$tmp/a/metrics.jsonl"; check "metrics carry tau and order" $?
grep -q '"mode": "meanfield"' "$tmp/a/config.json"; check "config.json resolved" $?

# NaN at global step 14 (epoch 2 of 12-step epochs): exit 1 naming the step; epoch 1's model stays intact.
# (multistep: with a cosine schedule the first epoch of a 1- and a 2-epoch run differ)
common+=(--schedule multistep)
$MFRES train "${common[@]}" --epochs 1 --seed 5 --out "$tmp/one" >/dev/null 2>&1
expect_exit 1 "NaN loss stops with the step" "global step 14" $MFRES train "${common[@]}" --epochs 2 --seed 5 --out "$tmp/nan" --inject-nan-step 14
cmp -s "$tmp/one/model.safetensors" "$tmp/nan/model.safetensors"; check "NaN stop keeps the last good model" $?
[ -z "$(ls "$tmp/nan" | grep tmp)" ]; check "no temporary files left behind" $?

# Resume: a run stopped in epoch 2 (NaN) and resumed finishes bit-identical to an unbroken run.
$MFRES train "${common[@]}" --epochs 3 --seed 5 --out "$tmp/full" >/dev/null 2>&1
$MFRES train "${common[@]}" --epochs 3 --seed 5 --out "$tmp/res" --inject-nan-step 20 >/dev/null 2>&1
$MFRES train "${common[@]}" --epochs 3 --seed 5 --out "$tmp/res" --resume >/dev/null 2>&1
cmp -s "$tmp/full/model.safetensors" "$tmp/res/model.safetensors" && [ -s "$tmp/res/metrics.jsonl" ] &&
  [ "$(strip "$tmp/full/metrics.jsonl")" = "$(strip "$tmp/res/metrics.jsonl")" ]
check "resume after a stop is bit-identical to an unbroken run" $?
cp "$tmp/res/config.json" "$tmp/config.before"
expect_exit 1 "resume with other flags is refused" "different run" \
  $MFRES train "${common[@]}" --epochs 3 --seed 6 --out "$tmp/res" --resume
cmp -s "$tmp/config.before" "$tmp/res/config.json"; check "a refused resume leaves the run's files alone" $?

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
