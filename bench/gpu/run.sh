#!/usr/bin/env bash
# The one script a visit to the GPU machine runs (bench/gpu/README.md): probe
# the machine, build mfres with CUDA, run the GPU tests, then time mfres and
# PyTorch (eager and torch.compile) side by side on ResNet-20, ResNet-56,
# ResNet-164 (bottleneck) and ResNeXt-29 8x64d, training and inference, batch
# 128, fp32 and bf16, and print the table.
#
#   bash bench/gpu/run.sh            (OUT defaults to build/gpu-out)
#
# $OUT receives eight files (the device machine returns at most eight):
# run.log (all this script prints), probe.txt, build.log, tests.log (the GPU
# tests' output), bench.log (every timed command and its output),
# gpu_bench.csv (model,mode,precision,impl,images_per_s), gpu_bench.md (the
# table) and failures.txt (one line per thing that failed or was skipped).
#
# Environment: OUT; BUDGET_S (the whole script's wall-clock budget, default
# 510 s: later sections shrink their timeouts or are skipped, recorded, to
# fit); PRECISIONS (default "fp32 bf16"; add tf32 for the third); MODELS (a
# subset of "resnet20 resnet56 resnet164 resnext29", in that order);
# TORCH_ONLY=1 (PyTorch alone: no build, tests or mfres); JOBS (make -j,
# default nproc); DRY_RUN=1 (a check of this script on any machine: no build
# or tests; $MFRES, default build/mfres, and PyTorch on the CPU, fp32, batch
# 8, one step each).
#
# Build dependencies: where the machine lacks oneDNN, OpenBLAS, LAPACKE,
# SQLite, Check or zlib, the kit that bench/gpu/pack_deps.sh makes
# (gpu-deps/kit.tar.xz, carried with the run) is unpacked into build/deps-root
# and used; without it the script stops after the probe.
#
# No section stops the script: each failure is recorded in failures.txt, and
# the table shows what did run.
set -u
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-$PWD/build/gpu-out}
WORK=$PWD/build/gpu-work
mkdir -p "$OUT" "$WORK" || exit 1
exec > >(tee -a "$OUT/run.log") 2>&1
TEE_PID=$!
trap 'exec 1>&- 2>&-; wait "$TEE_PID" 2>/dev/null' EXIT  # run.log complete before the script returns
BUDGET_S=${BUDGET_S:-510}
PRECISIONS=${PRECISIONS:-fp32 bf16}
MODELS=${MODELS:-resnet20 resnet56 resnet164 resnext29}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 8)}
DRY_RUN=${DRY_RUN:-0}
MFRES=${MFRES:-build/mfres}
DEVICE=cuda BATCH=128
if [ "$DRY_RUN" = 1 ]; then DEVICE=cpu BATCH=8 PRECISIONS=fp32; fi
export PYTHONUNBUFFERED=1
CSV=$OUT/gpu_bench.csv
# In the work directory (the device machine returns at most eight files from $OUT): their
# numbers reach gpu_bench.md's %-of-peak table, and their commands' output bench.log.
GEMMCSV=$WORK/gpu_gemm.csv    # precision,gemm_gflops: cuBLAS's dense-GEMM rate
FLOPCSV=$WORK/gpu_flops.csv   # model,precision,impl,train_gflops: mfres's training FLOP rate (3x forward)
FAILS=$OUT/failures.txt
BENCHLOG=$OUT/bench.log
TESTLOG=$OUT/tests.log
echo "model,mode,precision,impl,images_per_s" > "$CSV"
echo "model,precision,impl,train_gflops" > "$FLOPCSV"
echo "precision,gemm_gflops" > "$GEMMCSV"
: > "$FAILS"; : > "$BENCHLOG"; : > "$TESTLOG"
start=$SECONDS
RUNENV=()  # prefixed to mfres and the test programs: the kit's libraries, where used

left() { echo $((BUDGET_S - (SECONDS - start))); }
fail() { echo "FAILED: $*"; echo "$*" >> "$FAILS"; }
section() { printf '\n=== %s (t=%ds, %ds left)\n' "$1" $((SECONDS - start)) "$(left)"; }
# A timeout for the next command: at most $1 s, and the budget's remainder less
# 20 s for the table; none (exit 1) when under 10 s would remain.
budget() {
  local t=$(( $(left) - 20 ))
  [ "$t" -gt "$1" ] && t=$1
  [ "$t" -ge 10 ] || return 1
  echo "$t"
}
# Appends a command's log to one of the returned files, under a header.
keep() { # file title log
  { printf '\n##### %s\n' "$2"; cat "$3"; } >> "$1"
}

# ---------------------------------------------------------------- probe
section probe
# The python that holds PyTorch: the machine's python3 (a virtual environment
# on the device machine), else Debian's /usr/bin/python3.
PY=
for c in "$(command -v python3)" /usr/bin/python3; do
  [ -n "$c" ] && [ -x "$c" ] && timeout 120 "$c" -c 'import torch' >/dev/null 2>&1 && { PY=$c; break; }
done
[ -n "$PY" ] || PY=$(command -v python3 || echo /usr/bin/python3)
NVCC=$(command -v nvcc || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; })
CUDA_GUESS=${NVCC:+${NVCC%/bin/nvcc}}
# cuDNN may be only PyTorch's pip package (nvidia-cudnn-cu13) there: the Makefile takes it as CUDNN_HOME.
if [ -z "${CUDNN_HOME:-}" ] && [ ! -f "${CUDA_GUESS:-/nonexistent}/include/cudnn.h" ]; then
  d=$(timeout 120 "$PY" -c 'import nvidia.cudnn as c; print(list(c.__path__)[0])' 2>/dev/null | tail -1)
  [ -n "$d" ] && [ -f "$d/include/cudnn.h" ] && export CUDNN_HOME=$d
fi
CUDNN_INC=${CUDNN_HOME:+-isystem $CUDNN_HOME/include}
CUDNN_LIBDIR=${CUDNN_HOME:+$CUDNN_HOME/lib}
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $(uname -srm); $(nproc 2>/dev/null) cores;" \
       "$(free -g 2>/dev/null | awk '/^Mem:/ { print $2 " GiB memory" }'); disk: $(df -h . 2>/dev/null | awk 'NR == 2 { print $4 " free" }')"
  grep -m1 PRETTY_NAME /etc/os-release 2>/dev/null; ldd --version 2>&1 | head -1
  echo "--- nvidia-smi"
  timeout 30 nvidia-smi 2>&1 || echo "(nvidia-smi: exit $?)"
  timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,power.limit --format=csv 2>&1
  echo "--- nvcc"
  if [ -n "$NVCC" ]; then echo "$NVCC"; "$NVCC" --version 2>&1 | tail -2; else echo "nvcc: not found"; fi
  echo "--- cuDNN, cuBLAS (headers and libraries, wherever they are)"
  found=
  for f in ${CUDA_GUESS:+$CUDA_GUESS/include/cudnn_version.h} /usr/local/cuda/include/cudnn_version.h /usr/include/cudnn_version.h \
           /usr/include/x86_64-linux-gnu/cudnn_version*.h; do
    [ -f "$f" ] || continue
    case " $found " in *" $(realpath "$f") "*) continue;; esac
    found="$found $(realpath "$f")"
    echo "$f: $(grep -E '^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) ' "$f" | awk '{ print $2 "=" $3 }' | tr '\n' ' ')"
  done
  [ -n "$found" ] || echo "cudnn_version.h: not in the CUDA toolkit or /usr/include"
  for f in ${CUDA_GUESS:+$CUDA_GUESS/include/cublas_api.h} /usr/include/cublas_api.h; do
    [ -f "$f" ] && echo "$f: $(grep -E '^#define CUBLAS_VER_(MAJOR|MINOR|PATCH) ' "$f" | awk '{ print $2 "=" $3 }' | tr '\n' ' ')"
  done
  echo "anywhere (cudnn.h, cublas_v2.h, libcudnn.so*, libcublas.so*):"
  timeout 30 find /usr/local /usr/include /usr/lib/x86_64-linux-gnu /opt -maxdepth 7 \
    \( -name cudnn.h -o -name cublas_v2.h -o -name 'libcudnn.so*' -o -name 'libcublas.so*' \) 2>/dev/null | sort | head -20 | sed 's/^/  /'
  echo "--- PyTorch ($PY)"
  timeout 120 "$PY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.is_available())' 2>&1 | tail -3
  if [ "$PY" != /usr/bin/python3 ] && [ -x /usr/bin/python3 ]; then
    echo "(/usr/bin/python3: $(timeout 60 /usr/bin/python3 -c 'import torch; print(torch.__version__)' 2>&1 | tail -1))"
  fi
  timeout 60 "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1 | tail -1
} 2>&1 | tee "$OUT/probe.txt"

# The build dependencies: tools, headers, libraries. Prints the list; sets missing.
check_deps() {
  missing=()
  local c h f n
  for c in gcc cc make ar pkg-config; do
    if command -v "$c" >/dev/null 2>&1; then echo "  ✓ $c"; else echo "  ✗ $c"; [ "$c" = pkg-config ] || missing+=("$c"); fi
  done
  [ -n "$NVCC" ] || missing+=(nvcc)
  for h in oneapi/dnnl/dnnl.h:oneDNN cblas.h:CBLAS lapacke.h:LAPACKE zlib.h:zlib sqlite3.h:SQLite check.h:Check \
           cudnn.h:cuDNN cublas_v2.h:cuBLAS cuda_runtime.h:CUDA-runtime; do
    f=${h%%:*}; n=${h##*:}
    if echo "#include <$f>" | cc -E -x c $CUDNN_INC ${CUDA_GUESS:+-isystem "$CUDA_GUESS/include"} - >/dev/null 2>&1; then
      echo "  ✓ $n <$f>"
    else
      echo "  ✗ $n <$f>"
      case $f in check.h) echo "    (the GPU tests need Check; mfres itself builds without it)";; *) missing+=("$f");; esac
    fi
  done
  echo "  pkg-config check: $(pkg-config --libs check 2>&1)"
  if echo 'int main(void) { return 0; }' | cc -x c - -o "$WORK/linktest" -ldnnl -lopenblas -llapacke -lz -lsqlite3 -lm \
       >"$WORK/linktest.log" 2>&1; then
    echo "  ✓ links -ldnnl -lopenblas -llapacke -lz -lsqlite3"
  else
    echo "  ✗ cannot link -ldnnl -lopenblas -llapacke -lz -lsqlite3: $(grep -m1 'cannot find' "$WORK/linktest.log")"; missing+=(libraries)
  fi
  echo "  cuDNN from: ${CUDNN_HOME:-${CUDA_GUESS:-?}}"
  if [ -n "$CUDA_GUESS" ] && ! echo 'int main(void) { return 0; }' | cc -x c - -o "$WORK/linktest" \
       ${CUDNN_LIBDIR:+-L"$CUDNN_LIBDIR"} -L"$CUDA_GUESS/lib64" -l:libcudnn.so.9 -lcublas -lcudart >"$WORK/linktest.log" 2>&1; then
    echo "  ✗ cannot link -lcudnn -lcublas -lcudart from $CUDA_GUESS/lib64: $(grep -m1 'cannot find' "$WORK/linktest.log")"
    missing+=(cuda-libraries)
  fi
}
echo "--- build dependencies" | tee -a "$OUT/probe.txt"
check_deps | tee -a "$OUT/probe.txt"
check_deps >/dev/null  # again outside the pipe's subshell, to keep `missing`
if [ ${#missing[@]} -gt 0 ] && [ -f gpu-deps/kit.tar.xz ] && [ "$DRY_RUN" != 1 ] && [ "${TORCH_ONLY:-0}" != 1 ]; then
  echo "--- missing: ${missing[*]}; using the carried kit gpu-deps/kit.tar.xz (bench/gpu/pack_deps.sh)" | tee -a "$OUT/probe.txt"
  R=$PWD/build/deps-root
  rm -rf "$R" && mkdir -p "$R" && tar -C "$R" -xJf gpu-deps/kit.tar.xz
  L=$R/usr/lib/x86_64-linux-gnu
  export CPATH=$R/usr/include:$R/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}
  export LIBRARY_PATH=$L:$L/openblas-pthread${LIBRARY_PATH:+:$LIBRARY_PATH}
  export PKG_CONFIG_PATH=$L/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  RUNENV=(env "LD_LIBRARY_PATH=$L:$L/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
  check_deps | tee -a "$OUT/probe.txt"
  check_deps >/dev/null
fi
if [ ${#missing[@]} -gt 0 ] && [ "${TORCH_ONLY:-0}" != 1 ] && [ "$DRY_RUN" != 1 ]; then
  {
    echo "BUILD DEPENDENCIES MISSING: ${missing[*]}"
    echo "mfres cannot be built on this machine (nothing can be installed here); stopping after the probe."
    [ -f gpu-deps/kit.tar.xz ] || echo "HINT: bash bench/gpu/pack_deps.sh here, then carry gpu-deps with the run."
    echo "TORCH_ONLY=1 bash bench/gpu/run.sh measures PyTorch alone."
  } | tee -a "$OUT/probe.txt"
  echo "build dependencies missing: ${missing[*]}" >> "$FAILS"
  exit 3
fi

MFRES_OK=0
if [ "$DRY_RUN" = 1 ]; then
  section "DRY RUN: no build or tests; $MFRES and PyTorch on the CPU"
  [ -x "$MFRES" ] && MFRES_OK=1
elif [ "${TORCH_ONLY:-0}" != 1 ]; then
  # -------------------------------------------------------------- build
  section "build (make -j$JOBS all + the GPU tests)"
  if t=$(budget 300); then
    gpu_tests=()
    for s in tests/test_gpu_kernels.c tests/test_gpu_model.c; do [ -f "$s" ] && gpu_tests+=("build/tests/$(basename "$s" .c)"); done
    echo "+ make -j$JOBS all ${gpu_tests[*]}" > "$OUT/build.log"
    timeout -k 5 "$t" make -j"$JOBS" all "${gpu_tests[@]}" >> "$OUT/build.log" 2>&1
    rc=$?
    sed -n '/^features/,/gnuplot/p' "$OUT/build.log"
    if [ "$rc" -ne 0 ]; then
      fail "build: exit $rc ($(grep -m1 -E 'error|Error' "$OUT/build.log" | head -c 300))"
      # mfres alone, in case a test program was what failed.
      t=$(budget 120) && timeout -k 5 "$t" make -j"$JOBS" all >> "$OUT/build.log" 2>&1
    fi
    if [ -x build/mfres ] && grep -q "✓ CUDA backend" "$OUT/build.log"; then MFRES_OK=1
    elif [ -x build/mfres ]; then fail "build: mfres was built without the CUDA backend (see the feature list)"
    else fail "build: no build/mfres"; fi
  else
    fail "build: skipped, out of time"
  fi

  # -------------------------------------------------------------- GPU tests
  section "GPU tests"
  # Fashion-MNIST for test_gpu_model's training runs, carried in gpu-deps by pack_deps.sh.
  [ -d gpu-deps/fashion-mnist ] && export MFRES_FASHION_MNIST=$PWD/gpu-deps/fashion-mnist
  for name in test_gpu_kernels test_gpu_model; do
    bin=build/tests/$name
    if [ ! -x "$bin" ]; then
      if [ -f "tests/$name.c" ]; then fail "$name: not built"; else echo "$name: no tests/$name.c in this tree"; fi
      continue
    fi
    # test_gpu_model computes double-precision references on the CPU (two per bf16 and tf32 case) and three
    # Fashion-MNIST epochs: it gets longer.
    cap=100; [ "$name" = test_gpu_model ] && cap=150
    t=$(budget $cap) || { fail "$name: skipped, out of time"; continue; }
    t0=$SECONDS
    CK_DEFAULT_TIMEOUT=$t timeout -k 5 "$t" "${RUNENV[@]}" "$bin" > "$WORK/$name.log" 2>&1
    rc=$?
    keep "$TESTLOG" "$name (exit $rc, $((SECONDS - t0)) s)" "$WORK/$name.log"
    case $rc in
      0) echo "PASS $name ($((SECONDS - t0)) s)";;
      77) fail "$name: SKIPPED on the GPU machine: $(tail -1 "$WORK/$name.log")";;
      124|137) fail "$name: TIMEOUT after $t s";;
      *) fail "$name: exit $rc ($((SECONDS - t0)) s)"; tail -15 "$WORK/$name.log" | sed 's/^/    | /';;
    esac
  done
  if [ "$MFRES_OK" = 1 ] && [ -d /usr/share/datasets/fashion-mnist ] && t=$(budget 60); then
    timeout -k 5 "$t" "${RUNENV[@]}" bash tests/test_cli_device.sh > "$WORK/cli.log" 2>&1
    rc=$?
    keep "$TESTLOG" "test_cli_device.sh (exit $rc)" "$WORK/cli.log"
    if [ "$rc" -eq 0 ]; then echo "PASS test_cli_device.sh"; else fail "test_cli_device.sh: exit $rc ($(tail -1 "$WORK/cli.log"))"; fi
  else
    echo "test_cli_device.sh: not run (it needs the CUDA build and /usr/share/datasets/fashion-mnist)"
  fi
fi

# ---------------------------------------------------------------- timing
# name | mfres flags | torch_bench flags | timed steps | warm-up steps
spec() {
  case $1 in
    resnet20) echo "--model resnet20 --block postact|--model resnet20 --block postact|100|10";;
    resnet56) echo "--model resnet56 --block postact|--model resnet56 --block postact|50|8";;
    resnet164) echo "--model resnet164 --block bottleneck|--model resnet164 --block bottleneck|30|5";;
    resnext29) echo "--model resnext29-8x64d --block postact --classes 100|--model resnext29-8x64d --block postact --classes 100|12|3";;
    *) return 1;;
  esac
}
# The model's name in the CSV (as mfres and torch_bench print it).
csv_name() { case $1 in resnext29) echo resnext29-8x64d;; *) echo "$1";; esac; }

# mfres bench: both passes in one process; appends the train and infer rows.
run_mfres() { # model impl(mfres|mfres-meanfield) precision mode(vanilla|meanfield) cap_s
  local model=$1 impl=$2 prec=$3 mode=$4 cap=$5 t rc line mflags steps warm tr inf
  IFS='|' read -r mflags _ steps warm <<< "$(spec "$model")"
  [ "$DRY_RUN" = 1 ] && steps=1 warm=0
  local log=$WORK/run.log
  t=$(budget "$cap") || { fail "$model $impl $prec: skipped, out of time"; return; }
  local cmd="$MFRES bench --device $DEVICE --precision $prec $mflags --mode $mode --batch $BATCH --input 3x32x32 --iters $steps --warmup $warm"
  echo "+ $cmd" > "$log"
  # shellcheck disable=SC2086
  timeout -k 5 "$t" "${RUNENV[@]}" $cmd >> "$log" 2>&1
  rc=$?
  keep "$BENCHLOG" "$model $impl $prec (exit $rc)" "$log"
  line=$(grep '^train_images_per_s=' "$log" | tail -1)
  if [ "$rc" -eq 0 ] && [ -n "$line" ]; then
    tr=$(echo "$line" | sed -n 's/.*train_images_per_s=\([0-9.]*\).*/\1/p')
    inf=$(echo "$line" | sed -n 's/.*infer_images_per_s=\([0-9.]*\).*/\1/p')
    echo "$(csv_name "$model"),train,$prec,$impl,$tr" >> "$CSV"
    echo "$(csv_name "$model"),infer,$prec,$impl,$inf" >> "$CSV"
    gf=$(sed -n 's/.*training:.* \([0-9.]*\) GFLOP\/s.*/\1/p' "$log" | tail -1)
    [ -n "$gf" ] && echo "$(csv_name "$model"),$prec,$impl,$gf" >> "$FLOPCSV"
    printf '  %-16s %-16s %-5s train %10s  infer %10s images/s\n' "$model" "$impl" "$prec" "$tr" "$inf"
  else
    fail "$model $impl $prec: exit $rc ($(tail -1 "$log" | head -c 300))"
  fi
}

# torch_bench.py: every (impl, precision, pass) of one model in one process; a
# timeout keeps the lines already printed.
run_torch() { # model impls cap_s
  local model=$1 impls=$2 cap=$3 t rc tflags steps warm
  IFS='|' read -r _ tflags steps warm <<< "$(spec "$model")"
  [ "$DRY_RUN" = 1 ] && steps=1 warm=0
  local log=$WORK/run.log
  t=$(budget "$cap") || { fail "$model torch $impls: skipped, out of time"; : > "$log"; return; }
  local cmd="$PY bench/gpu/torch_bench.py $tflags --device $DEVICE --batch $BATCH --input 3x32x32 --precisions ${PRECISIONS// /,} --impls $impls --steps $steps --warmup $warm"
  echo "+ $cmd" > "$log"
  # shellcheck disable=SC2086
  timeout -k 5 "$t" $cmd >> "$log" 2>&1
  rc=$?
  keep "$BENCHLOG" "$model torch $impls (exit $rc)" "$log"
  grep '^result ' "$log" | sed -E 's/^result model=([^ ]+) mode=([^ ]+) precision=([^ ]+) impl=([^ ]+) images_per_s=([0-9.]+).*/\1,\2,\3,\4,\5/' >> "$CSV"
  grep '^result ' "$log" | sed 's/^result /  /'
  grep '^error ' "$log" | while read -r l; do fail "torch: ${l#error }"; done
  case $rc in
    0) ;;
    124|137) fail "$model torch $impls: TIMEOUT after $t s (the measurements printed before it are kept)";;
    *) fail "$model torch $impls: exit $rc ($(grep -v '^result\|^error\|^#\|^+' "$log" | tail -1 | head -c 300))";;
  esac
}

section "the GPU's GEMM peak per precision (cuBLAS, mfres bench --gemm): the yardstick for % of peak"
if [ "$MFRES_OK" = 1 ]; then  # (a dry run times the CPU's cblas_sgemm instead)
  for prec in $PRECISIONS; do
    t=$(budget 30) || { fail "gemm $prec: skipped, out of time"; continue; }
    timeout -k 5 "$t" "${RUNENV[@]}" $MFRES bench --gemm --device $DEVICE --precision "$prec" > "$WORK/gemm.log" 2>&1
    rc=$?
    keep "$BENCHLOG" "gemm $prec (exit $rc)" "$WORK/gemm.log"
    v=$(sed -n 's/^s\{0,1\}gemm_gflops=\([0-9.]*\).*/\1/p' "$WORK/gemm.log")
    if [ "$rc" -eq 0 ] && [ -n "$v" ]; then echo "$prec,$v" >> "$GEMMCSV"; echo "  $prec: $v GFLOP/s"
    else fail "gemm $prec: exit $rc ($(tail -1 "$WORK/gemm.log" | head -c 200))"; fi
  done
fi

section "timing: mfres and PyTorch eager, interleaved per model"
[ "$MFRES_OK" = 1 ] || echo "(no mfres with CUDA here: PyTorch alone)"
for model in $MODELS; do
  spec "$model" >/dev/null || { fail "unknown model '$model' in MODELS"; continue; }
  case $model in resnext29) cap=150;; resnet164) cap=100;; *) cap=75;; esac
  if [ "$MFRES_OK" = 1 ]; then
    for prec in $PRECISIONS; do run_mfres "$model" mfres "$prec" vanilla "$cap"; done
    if [ "$model" = resnet20 ]; then
      for prec in $PRECISIONS; do run_mfres "$model" mfres-meanfield "$prec" meanfield "$cap"; done
    fi
  fi
  run_torch "$model" eager $((cap + 30))
done

section "timing: torch.compile (ResNet-20 first; the others while the budget lasts)"
for model in $MODELS; do
  spec "$model" >/dev/null || continue
  case $model in resnet20) cap=240;; *) cap=200;; esac
  run_torch "$model" compile "$cap"
  if ! grep -q '^result ' "$WORK/run.log"; then
    fail "torch.compile gave no result for $model: the remaining models' compile runs are skipped"
    break
  fi
done

{ echo "--- after the timing"; timeout 20 nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used --format=csv 2>&1; } \
  >> "$OUT/probe.txt"

# ---------------------------------------------------------------- table
section table
"$PY" - "$CSV" "$FAILS" "$BATCH" "$GEMMCSV" "$FLOPCSV" <<'PY' > "$OUT/gpu_bench.md"
import csv, sys
rows = {}
gemm = {r["precision"]: float(r["gemm_gflops"]) for r in csv.DictReader(open(sys.argv[4])) if r.get("gemm_gflops")}
flops = {(r["model"], r["precision"], r["impl"]): float(r["train_gflops"])
         for r in csv.DictReader(open(sys.argv[5])) if r.get("train_gflops")}
for r in csv.DictReader(open(sys.argv[1])):
    try:
        rows[(r["model"], r["mode"], r["precision"], r["impl"])] = float(r["images_per_s"])
    except ValueError:
        pass
models, precs = [], []
for (m, _, p, _) in rows:
    if m not in models: models.append(m)
    if p not in precs: precs.append(p)
order = ["resnet20", "resnet56", "resnet164", "resnext29-8x64d"]
models.sort(key=lambda m: order.index(m) if m in order else 99)
precs.sort(key=lambda p: ["fp32", "tf32", "bf16"].index(p) if p in ["fp32", "tf32", "bf16"] else 9)
fmt = lambda v: f"{v:,.0f}" if v else "—"
ratio = lambda a, b: f"{a / b:.2f}×" if a and b else "—"
print("| model | pass | precision | mfres | mfres mean-field | torch eager | torch.compile | mfres/eager | mfres/compile |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
for m in models:
    for mode in ("train", "infer"):
        for p in precs:
            g = lambda impl: rows.get((m, mode, p, impl))
            a, mf, e, c = g("mfres"), g("mfres-meanfield"), g("torch-eager"), g("torch-compile")
            if any((a, mf, e, c)):
                print(f"| {m} | {mode} | {p} | {fmt(a)} | {fmt(mf)} | {fmt(e)} | {fmt(c)} | {ratio(a, e)} | {ratio(a, c)} |")
print(f"\nimages/s at batch {sys.argv[3]}, 3x32x32. mfres: vanilla (the networks PyTorch runs); mean-field: Algorithm 1")
print("in the step. mfres training includes the on-device gather, normalisation, crop and flip; its inference takes a")
print("float batch from the host (as mfres eval). PyTorch: data on the GPU (uint8, normalised there), channels_last,")
print("cudnn.benchmark on, no host sync between steps.")
print("\nP1's ResNet-20 recipe, 160 epochs of 50,000 images: 50,000 x 160 / training images/s (GPU time, no evaluation;")
print("in brackets with a 10,000-image test pass per epoch at the inference rate):\n")
print("| precision | implementation | training images/s | 160 epochs |")
print("|---|---|---:|---:|")
est = {}
for p in precs:
    for impl, label in (("mfres", "mfres"), ("mfres-meanfield", "mfres mean-field"), ("torch-eager", "torch eager"),
                        ("torch-compile", "torch.compile")):
        tr, inf = rows.get(("resnet20", "train", p, impl)), rows.get(("resnet20", "infer", p, impl))
        if not tr:
            continue
        s = 50000 * 160 / tr
        est[(p, impl)] = s
        with_eval = f" ({(s + 10000 * 160 / inf) / 60:.1f} min)" if inf else ""
        print(f"| {p} | {label} | {tr:,.0f} | {s / 60:.1f} min{with_eval} |")
print("\nGoals (issue 13):")
for p in precs:
    a, e, c = (rows.get(("resnet20", "train", p, i)) for i in ("mfres", "torch-eager", "torch-compile"))
    if a and e:
        print(f"- ResNet-20 training {p}: mfres / torch eager = {a / e:.2f} (goal >= 2): {'MET' if a / e >= 2 else 'not met'}")
    if a and c:
        print(f"- ResNet-20 training {p}: mfres / torch.compile = {a / c:.2f} (goal > 1): {'MET' if a > c else 'not met'}")
for impl in ("mfres", "mfres-meanfield"):
    s = est.get(("bf16", impl))
    if s:
        print(f"- 160-epoch ResNet-20 in bf16 ({impl}): {s / 60:.2f} min (goal <= 3): {'MET' if s <= 180 else 'not met'}")
if gemm:
    print("\nmfres training as a fraction of the GPU's dense-GEMM peak at the same precision (cuBLAS, `mfres bench --gemm`;")
    print("training FLOPs counted as 3x the forward's direct-convolution FLOPs, so a Winograd or FFT algorithm, which")
    print("multiplies less, can pass 100 %):\n")
    print("| model | precision | GEMM peak GFLOP/s | mfres training GFLOP/s | % of peak |")
    print("|---|---|---:|---:|---:|")
    for m in models:
        for p in precs:
            f, g = flops.get((m, p, "mfres")), gemm.get(p)
            if f and g:
                print(f"| {m} | {p} | {g:,.0f} | {f:,.0f} | {100 * f / g:.1f} % |")
fails = [l.strip() for l in open(sys.argv[2]) if l.strip()]
print(f"\n{len(fails)} failures recorded" + (":" if fails else "."))
for l in fails:
    print(f"- {l}")
PY
if [ $? -eq 0 ]; then cat "$OUT/gpu_bench.md"; else echo "(the table script failed; the numbers are in gpu_bench.csv)"; cat "$CSV"; fi
section finished
echo "files in $OUT: run.log probe.txt build.log tests.log bench.log gpu_bench.csv gpu_bench.md failures.txt"
