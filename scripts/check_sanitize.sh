#!/usr/bin/env bash
# Runs the ASan+UBSan build made by `make check-sanitize` (directory $1).
#
# Which tests, and why not all: the file-format, .npy/CSV and data-loader tests
# (test_formats, test_io, test_data) hold every parser of outside input, which is
# where memory errors matter; then the CLI trains a tiny ResNet through a NaN
# stop, a resume and an eval, and is fed damaged files. The numerical tests
# (layers, model, theory) run for minutes under ASan on 2 cores, and their
# buffers are fixed-size arenas already checked by the same code paths here.
set -u
cd "$(dirname "$0")/.."
build=${1:-build-sanitize}
export ASAN_OPTIONS="abort_on_error=0:detect_leaks=1:halt_on_error=1:exitcode=66${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=0"
export MFRES_SHARED_DATA="${MFRES_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
export CK_DEFAULT_TIMEOUT=600
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
step() { # description, command...
  local desc=$1; shift
  local t0=$SECONDS
  if "$@" >"$tmp/log" 2>&1; then printf 'ok   %-60s %4ds\n' "$desc" $((SECONDS-t0))
  else printf 'FAIL %-60s (exit %d)\n' "$desc" $?; grep -E -A30 'ERROR: (Address|Leak)Sanitizer|runtime error|FAIL|F:' "$tmp/log" | head -60
    fails=$((fails+1)); fi
}
# The CLI must fail cleanly (exit 1), not with a sanitizer report (exit 66).
expect1() { "$@"; [ $? -eq 1 ]; }

for t in test_formats test_io test_data; do step "$t (ASan+UBSan)" "$build/tests/$t"; done
m=$build/mfres
tiny=(--model resnet8 --batch 32 --train-limit 96 --test-limit 64 --threads 2 --quiet --schedule multistep)
step "train, NaN stop at step 4" expect1 "$m" train "${tiny[@]}" --epochs 2 --out "$tmp/run" --inject-nan-step 4
step "resume to the end" "$m" train "${tiny[@]}" --epochs 2 --out "$tmp/run" --resume
step "eval of the model" "$m" eval --model-file "$tmp/run/model.safetensors" --batch 32 --limit 64 --threads 2
head -c 3000 "$tmp/run/model.safetensors" > "$tmp/cut.safetensors"
step "eval of a cut model file" expect1 "$m" eval --model-file "$tmp/cut.safetensors"
python3 - "$tmp/run/model.safetensors" "$tmp/meta.safetensors" <<'PY'
import sys
blob = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(blob.replace(b'"bn_eps":"', b'"bn_eps":"n', 1).replace(b'"data":"fashion-mnist', b'"data":"fashion-mnis', 1))
PY
step "eval of a model file with bad metadata" expect1 "$m" eval --model-file "$tmp/meta.safetensors"
[ "$fails" -eq 0 ] && echo "sanitized checks passed" || echo "$fails sanitized checks failed"
[ "$fails" -eq 0 ]
