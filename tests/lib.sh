# Shared by the shell tests (sourced, not run): a temporary directory removed on
# exit, a failure count, and the two checks every script uses.
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
  else echo "FAIL $desc (exit $got, want $want; stderr: $(head -c 400 "$tmp/err"))"; fails=$((fails+1)); fi
}
