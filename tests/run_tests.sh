#!/usr/bin/env bash
# Runs every test binary in build/tests and every tests/test_*.py under Debian's
# python3 (the one that sees python3-torch), the numerical ones twice (native
# ISA, then AVX2). Prints one line per test program
# and a final "N passed, N failed, N skipped" line; exits non-zero if anything
# failed. A program that exits 77 (automake's convention: it cannot run here,
# e.g. the GPU tests on a machine without a GPU) is skipped, not passed, and
# its last output line says why.
set -u
cd "$(dirname "$0")/.."
passed=0; failed=0; skipped=0; failed_names=()
export MFRES_SHARED_DATA="${MFRES_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
export CK_DEFAULT_TIMEOUT="${CK_DEFAULT_TIMEOUT:-600}"
run_one() {
  local name=$1; shift
  local log; log=$(mktemp)
  local t0=$SECONDS
  "$@" >"$log" 2>&1
  local rc=$?
  if [ "$rc" -eq 0 ]; then
    passed=$((passed+1)); printf 'PASS %-40s %4ds\n' "$name" $((SECONDS-t0))
  elif [ "$rc" -eq 77 ]; then
    skipped=$((skipped+1))
    local why; why=$(grep -v '^[[:space:]]*$' "$log" | tail -1)
    why=${why#SKIP}; why=${why#:}; why=${why# }; why=${why#"$name"}; why=${why#:}; why=${why# }  # no "SKIP x: SKIP x:"
    printf 'SKIP %s: %s\n' "$name" "$why"
  else
    failed=$((failed+1)); failed_names+=("$name"); printf 'FAIL %-40s %4ds\n' "$name" $((SECONDS-t0))
    sed 's/^/    | /' "$log" | tail -40
  fi
  rm -f "$log"
}
for t in build/tests/test_*; do
  [ -x "$t" ] || continue
  run_one "$(basename "$t")" "$t"
done
for t in tests/test_*.py; do
  [ -f "$t" ] || continue
  run_one "$(basename "$t")" /usr/bin/python3 "$t"
done
# The numerical tests again with oneDNN held to AVX2, so that the AVX2 code
# paths (8-channel blocks, our own Winograd kernel, the stem's layout fallback)
# are tested on AVX-512 machines too.
for t in build/tests/test_layers build/tests/test_model build/tests/test_sync_bn; do
  [ -x "$t" ] && run_one "$(basename "$t") (AVX2)" env DNNL_MAX_CPU_ISA=AVX2 "$t"
done
run_one "test_torch_reference.py (AVX2)" env DNNL_MAX_CPU_ISA=AVX2 /usr/bin/python3 tests/test_torch_reference.py
for t in tests/test_*.sh; do
  [ -f "$t" ] || continue
  run_one "$(basename "$t")" bash "$t"
done
[ ${#failed_names[@]} -eq 0 ] || echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
