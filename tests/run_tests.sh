#!/usr/bin/env bash
# Runs every test binary in build/tests and every tests/test_*.py under Debian's
# python3 (the one that sees python3-torch), the numerical ones twice (native
# ISA, then AVX2), then every tests/test_*.sh. Prints one line per test program
# as it ends and a final "N passed, N failed, N skipped" line; exits non-zero if
# anything failed. A program that exits 77 (automake's convention: it cannot run
# here, e.g. the GPU tests on a machine without a GPU) is skipped, not passed,
# and its last output line says why.
#
# The test binaries run MFRES_TEST_JOBS at a time (default: one per core): they
# use one core each (the GPU emulations and the model tests are most of the
# suite's time), so on CI's two cores this nearly halves their time. They can
# share the machine: each works in its own mktemp directory and none times
# itself. The Python and shell tests then run one at a time, because they run
# mfres on two threads, and OpenMP threads that share a core with another
# program spin at their barriers (two of them beside another test took 2 to 8
# times as long). MFRES_TEST_JOBS=1 runs everything one by one. The seconds
# printed are each program's own wall time, with other tests running beside.
set -u
cd "$(dirname "$0")/.."
export MFRES_SHARED_DATA="${MFRES_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
export CK_DEFAULT_TIMEOUT="${CK_DEFAULT_TIMEOUT:-600}"
jobs_max=${MFRES_TEST_JOBS:-$(nproc)}
case $jobs_max in ''|*[!0-9]*|0) echo "MFRES_TEST_JOBS=$jobs_max: expected a positive whole number" >&2; exit 2;; esac

names=(); cmds=(); shared=()  # shared[i]=1: job i may run beside others
add() { local name=$1; shift; names+=("$name"); cmds+=("$(printf '%q ' "$@")"); shared+=("$share"); }
share=1
for t in build/tests/test_*; do
  [ -x "$t" ] && add "$(basename "$t")" "$t"
done
# The numerical tests again with oneDNN held to AVX2, so that the AVX2 code
# paths (8-channel blocks, our own Winograd kernel, the stem's layout fallback)
# are tested on AVX-512 machines too.
for t in build/tests/test_layers build/tests/test_model build/tests/test_sync_bn; do
  [ -x "$t" ] && add "$(basename "$t") (AVX2)" env DNNL_MAX_CPU_ISA=AVX2 "$t"
done
share=0
for t in tests/test_*.py; do
  [ -f "$t" ] && add "$(basename "$t")" /usr/bin/python3 "$t"
done
add "test_torch_reference.py (AVX2)" env DNNL_MAX_CPU_ISA=AVX2 /usr/bin/python3 tests/test_torch_reference.py
for t in tests/test_*.sh; do
  [ -f "$t" ] && add "$(basename "$t")" bash "$t"
done

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
passed=0; failed=0; skipped=0; failed_names=()
# Runs job $1 in the background; its exit status and seconds land in $logs/$1.rc.
start() {
  local i=$1
  ( t0=$SECONDS; eval "${cmds[$i]}" >"$logs/$i.log" 2>&1; rc=$?
    echo "$rc $((SECONDS-t0))" >"$logs/$i.rc.tmp" && mv "$logs/$i.rc.tmp" "$logs/$i.rc" ) &
}
report() {
  local i=$1 name=${names[$1]} rc secs
  read -r rc secs <"$logs/$i.rc"
  if [ "$rc" -eq 0 ]; then
    passed=$((passed+1)); printf 'PASS %-40s %4ds\n' "$name" "$secs"
  elif [ "$rc" -eq 77 ]; then
    skipped=$((skipped+1))
    local why; why=$(grep -v '^[[:space:]]*$' "$logs/$i.log" | tail -1)
    why=${why#SKIP}; why=${why#:}; why=${why# }; why=${why#"$name"}; why=${why#:}; why=${why# }  # no "SKIP x: SKIP x:"
    printf 'SKIP %s: %s\n' "$name" "$why"
  else
    failed=$((failed+1)); failed_names+=("$name"); printf 'FAIL %-40s %4ds\n' "$name" "$secs"
    sed 's/^/    | /' "$logs/$i.log" | tail -40
  fi
}
next=0; running=(); total=${#names[@]}
while [ "$next" -lt "$total" ] || [ ${#running[@]} -gt 0 ]; do
  # A job starts beside others only if it and they may share.
  while [ "$next" -lt "$total" ] && [ ${#running[@]} -lt "$jobs_max" ] &&
        { [ ${#running[@]} -eq 0 ] || { [ "${shared[$next]}" = 1 ] && [ "${shared[${running[0]}]}" = 1 ]; }; }; do
    start "$next"; running+=("$next"); next=$((next+1))
  done
  wait -n 2>/dev/null
  if [ $? -eq 127 ]; then  # no child left: a job ended without writing its status
    for i in "${running[@]}"; do
      [ -f "$logs/$i.rc" ] || { echo "(the test's shell ended without an exit status)" >>"$logs/$i.log"; echo "1 0" >"$logs/$i.rc"; }
    done
  fi
  still=()
  for i in "${running[@]}"; do
    if [ -f "$logs/$i.rc" ]; then report "$i"; else still+=("$i"); fi
  done
  running=("${still[@]+"${still[@]}"}")
done
wait
[ ${#failed_names[@]} -eq 0 ] || echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
