#!/usr/bin/env bash
# --device and --precision on the command line (docs/GPU.md). Everywhere: bad
# values are usage errors naming the flag and the valid values (exit 2), the
# CPU refuses tf32 and bf16, and --device cpu trains, evaluates and benches as
# before. Then one of two branches, and the script says which ran:
#   no GPU here (no nvidia-smi, or it lists none), or a build without CUDA:
#     train, eval and bench --device cuda exit 2 with a message that names CUDA
#     or the GPU and says why, before any data or model file is read;
#   a GPU and a CUDA build: bench --device cuda runs, a tiny train --device cuda
#     writes a model that eval on the CPU reads back to training's accuracy.
set -u
cd "$(dirname "$0")/.."
MFRES=${MFRES_BUILD:-build}/mfres
. tests/lib.sh  # tmp, fails, check, expect_exit (the cd above put us at the top)

# The flags' values: exit 2 naming the flag and what it takes.
for cmd in train "eval --model-file $tmp/none.safetensors" bench; do
  name=${cmd%% *}
  # shellcheck disable=SC2086
  expect_exit 2 "$name --device tpu names the flag and cpu, cuda" "\-\-device 'tpu': expected cpu or cuda" \
    $MFRES $cmd --device tpu
  # shellcheck disable=SC2086
  expect_exit 2 "$name --precision fp16 names the flag and its values" "\-\-precision 'fp16': expected fp32, tf32 or bf16" \
    $MFRES $cmd --precision fp16
  # shellcheck disable=SC2086
  expect_exit 2 "$name --precision bf16 on the CPU is refused" "\-\-precision bf16 runs on the GPU only" \
    $MFRES $cmd --precision bf16
  # shellcheck disable=SC2086
  expect_exit 2 "$name --device cpu --precision tf32 is refused" "\-\-precision tf32 runs on the GPU only" \
    $MFRES $cmd --device cpu --precision tf32
done
expect_exit 2 "train --device needs a value" "\-\-device needs a value" $MFRES train --device
expect_exit 2 "bench --profile is the CPU's" "\-\-profile times the CPU" $MFRES bench --profile --device cuda
$MFRES train --help | grep -q -- "--device cpu|cuda" && $MFRES eval --help | grep -q -- "--precision fp32|tf32|bf16" &&
  $MFRES bench --help | grep -q -- "--device cpu|cuda"
check "train, eval and bench --help list --device and --precision" $?

# --device cpu --precision fp32, said out loud, is the default run.
tiny=(--model resnet8 --batch 64 --train-limit 128 --test-limit 128 --epochs 1 --threads 2 --quiet)
$MFRES train "${tiny[@]}" --device cpu --precision fp32 --out "$tmp/cpu" > "$tmp/cpu.txt" 2>&1
rc=$?
[ "$rc" -eq 0 ] && [ -s "$tmp/cpu/model.safetensors" ] && grep -q "test_acc=" "$tmp/cpu.txt"
check "train --device cpu runs (exit $rc)" $?
grep -q '"device": "cpu"' "$tmp/cpu/config.json" && grep -q '"precision": "fp32"' "$tmp/cpu/config.json"
check "config.json records device and precision" $?
$MFRES eval --model-file "$tmp/cpu/model.safetensors" --limit 128 --batch 64 --threads 2 --device cpu > "$tmp/eval.txt" 2>&1
check "eval --device cpu runs" $?
$MFRES bench --model resnet8 --batch 16 --iters 1 --warmup 0 --threads 2 --device cpu > "$tmp/bench.txt" 2>&1
rc=$?
[ "$rc" -eq 0 ] && tail -1 "$tmp/bench.txt" | grep -q "^train_images_per_s=[0-9.]* infer_images_per_s=[0-9.]* device=cpu precision=fp32 model=resnet8 " &&
  grep -q "device cpu, precision fp32: " "$tmp/bench.txt"
r=$?; check "bench --device cpu: the device in the header, the result line parseable ($(tail -1 "$tmp/bench.txt"))" $r

# A training state from before --device (no device or precision in its settings) resumes as the CPU's fp32.
cp -r "$tmp/cpu" "$tmp/old"
/usr/bin/python3 - "$tmp/old/state.safetensors" <<'PY'
import json, struct, sys
path = sys.argv[1]
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + n])
for k in ("setting.device", "setting.precision"):
    del head["__metadata__"][k]
text = json.dumps(head).encode()
text += b" " * (-len(text) % 8)
open(path, "wb").write(struct.pack("<Q", len(text)) + text + raw[8 + n:])
PY
! grep -aq 'setting.device' "$tmp/old/state.safetensors" &&
  $MFRES train "${tiny[@]}" --epochs 2 --resume --out "$tmp/old" > "$tmp/old.txt" 2>&1 &&
  [ "$(wc -l < "$tmp/old/metrics.jsonl")" -eq 2 ]
r=$?; check "a training state written before --device existed resumes on the CPU ($(tail -1 "$tmp/old.txt" | head -c 160))" $r

# Which branch: a GPU listed by nvidia-smi, and this mfres built with CUDA.
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
$MFRES bench --device cuda --model resnet8 --batch 16 --iters 1 --warmup 1 > "$tmp/probe.txt" 2>&1
probe_rc=$?
if [ "$gpus" -gt 0 ] && grep -q "built without the CUDA backend" "$tmp/probe.txt"; then
  branch="a GPU, but this mfres was built without CUDA"
elif [ "$gpus" -gt 0 ]; then
  branch="GPU"
else
  branch="no GPU"
fi
echo "     branch: $branch (nvidia-smi lists $gpus GPUs; bench --device cuda exit $probe_rc: $(tail -1 "$tmp/probe.txt" | head -c 200))"

if [ "$branch" != GPU ]; then
  # Exit 2 naming CUDA or the GPU and saying why, before the data or model file is touched:
  # a missing data directory or model file would be exit 1 naming the file.
  refused() { # description, command...
    local desc=$1; shift
    "$@" >"$tmp/out" 2>"$tmp/err"; local got=$?
    if [ "$got" -eq 2 ] && grep -qi "cuda\|gpu" "$tmp/err" &&
       grep -qi "built without\|no .*gpu\|gpu.* not found\|no cuda\|driver\|no device" "$tmp/err"; then
      echo "ok   $desc: $(head -1 "$tmp/err" | head -c 200)"
    else
      echo "FAIL $desc (exit $got, want 2 naming CUDA or the GPU and why; stderr: $(head -c 400 "$tmp/err"))"
      fails=$((fails+1))
    fi
  }
  refused "train --device cuda refused" $MFRES train "${tiny[@]}" --device cuda --data mnist:/nonexistent --out "$tmp/gpu"
  [ ! -e "$tmp/gpu" ]; check "the refused train wrote nothing" $?
  refused "train --device cuda --precision bf16 refused" $MFRES train "${tiny[@]}" --device cuda --precision bf16 --out "$tmp/gpu"
  refused "eval --device cuda refused" $MFRES eval --device cuda --model-file "$tmp/nothere.safetensors"
  refused "eval --device cuda of a real model refused" $MFRES eval --device cuda --model-file "$tmp/cpu/model.safetensors"
  refused "bench --device cuda refused" $MFRES bench --device cuda --model resnet8 --iters 1 --warmup 0
  refused "bench --gemm --device cuda refused" $MFRES bench --gemm --device cuda --precision bf16
else
  # Trains on the GPU in a precision, then evaluates the model file on the CPU: training's accuracy within tol.
  gpu_trains_cpu_agrees() { # precision tol
    local p=$1 tol=$2 rc r acc_gpu acc_cpu
    $MFRES train "${tiny[@]}" --train-limit 1024 --test-limit 512 --device cuda --precision "$p" --out "$tmp/$p" \
      > "$tmp/$p.txt" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] && [ -s "$tmp/$p/model.safetensors" ] && grep -q '"device": "cuda"' "$tmp/$p/config.json" &&
      grep -q "\"precision\": \"$p\"" "$tmp/$p/config.json"
    r=$?; check "train --device cuda --precision $p runs (exit $rc: $(tail -1 "$tmp/$p.txt" | head -c 200))" $r
    acc_gpu=$(tail -1 "$tmp/$p/metrics.jsonl" 2>/dev/null | sed -E 's/.*"test_acc": ([0-9.]+).*/\1/')
    $MFRES eval --model-file "$tmp/$p/model.safetensors" --batch 64 --limit 512 --threads 2 > "$tmp/eval-$p.txt" 2>&1
    acc_cpu=$(sed -n -E 's/.*test_acc=([0-9.]+).*/\1/p' "$tmp/eval-$p.txt")
    awk -v a="${acc_gpu:-x}" -v b="${acc_cpu:-y}" -v t="$tol" 'BEGIN { exit !(a != "x" && b != "y" && a - b < t && b - a < t) }'
    check "eval on the CPU of the $p GPU-trained model: training's accuracy ($acc_gpu on the GPU, ${acc_cpu:-none} on the CPU)" $?
  }
  gpu_trains_cpu_agrees fp32 0.011  # fp32 on both, but other convolution algorithms: a few of 512 argmaxes may differ
  gpu_trains_cpu_agrees bf16 0.03   # bfloat16 activations in training, float32 on the CPU: a few more may move
  acc_cpu=$(tail -1 "$tmp/cpu/metrics.jsonl" | sed -E 's/.*"test_acc": ([0-9.]+).*/\1/')
  $MFRES eval --model-file "$tmp/cpu/model.safetensors" --batch 64 --limit 128 --device cuda > "$tmp/eval2.txt" 2>&1
  acc_gpu=$(sed -n -E 's/.*test_acc=([0-9.]+).*/\1/p' "$tmp/eval2.txt")
  awk -v a="${acc_cpu:-x}" -v b="${acc_gpu:-y}" 'BEGIN { exit !(a != "x" && b != "y" && a - b < 0.02 && b - a < 0.02) }'
  check "eval --device cuda of a CPU-trained model: training's accuracy ($acc_cpu on the CPU, ${acc_gpu:-none} on the GPU)" $?
  $MFRES bench --gemm --device cuda --precision bf16 > "$tmp/gemm.txt" 2>&1
  tail -1 "$tmp/gemm.txt" | grep -Eq '^gemm_gflops=[0-9]+\.[0-9] device=cuda precision=bf16$'
  r=$?; check "bench --gemm --device cuda: cuBLAS's rate ($(tail -1 "$tmp/gemm.txt" | head -c 120))" $r
  for p in fp32 tf32 bf16; do  # their speed is bench/gpu's, their numbers test_gpu_model's
    $MFRES bench --device cuda --precision $p --model resnet8 --batch 64 --iters 2 --warmup 2 > "$tmp/bench.txt" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] && tail -1 "$tmp/bench.txt" | grep -q "device=cuda precision=$p "
    r=$?; check "bench --device cuda --precision $p ($(tail -1 "$tmp/bench.txt" | head -c 120))" $r
  done
fi

echo "$fails failures (branch: $branch)"
[ "$fails" -eq 0 ]
