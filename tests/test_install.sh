#!/usr/bin/env bash
# make install PREFIX=... puts libmfres, the public headers, mfres, mfres.pc and
# the man page in place, and a small program builds against the installed
# library with pkg-config alone and runs.
set -u
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { if [ "$2" -eq 0 ]; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails+1)); fi; }
prefix="$tmp/prefix"
make --no-print-directory install PREFIX="$prefix" BUILD="${MFRES_BUILD:-build}" >"$tmp/install.log" 2>&1
r=$?; check "make install PREFIX=$prefix ($(tail -1 "$tmp/install.log"))" $r
for f in bin/mfres lib/libmfres.a include/mfres/core.h include/mfres/model.h include/mfres/safetensors.h \
         lib/pkgconfig/mfres.pc share/man/man1/mfres.1; do
  [ -s "$prefix/$f" ]; check "installed $f" $?
done
"$prefix/bin/mfres" --help | grep -q "usage: mfres"; check "the installed mfres runs" $?
man -l "$prefix/share/man/man1/mfres.1" 2>/dev/null | grep -q -- "--allow-change"; check "the man page renders" $?
cat > "$tmp/use.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <mfres/core.h>
#include <mfres/model.h>
#include <mfres/safetensors.h>
/* Builds a ResNet-8, saves it, loads it back and compares the weights. */
int main(int argc, char **argv) {
    if (argc != 2) return 2;
    mfres_model_config c;
    mfres_model_config_default(&c);
    c.depth = 8, c.in_c = 1, c.in_h = 8, c.in_w = 8, c.batch = 2;
    mfres_model m, back;
    if (mfres_model_create(&m, &c, 1) || mfres_model_save(&m, argv[1], "mnist", NULL, NULL) ||
        mfres_model_load(&back, argv[1], 2, NULL, 0, NULL, NULL)) {
        fprintf(stderr, "error: %s\n", mfres_last_error());
        return 1;
    }
    int same = back.n_params == m.n_params && !memcmp(back.params, m.params, m.n_params * sizeof(float));
    printf("%zu parameters, %s\n", m.n_params, same ? "round trip exact" : "round trip DIFFERS");
    mfres_model_free(&m);
    mfres_model_free(&back);
    return same ? 0 : 1;
}
C
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
flags=$(pkg-config --cflags --libs mfres)
check "pkg-config --cflags --libs mfres ($flags)" $?
# shellcheck disable=SC2086
cc -std=c11 -o "$tmp/use" "$tmp/use.c" $flags 2>"$tmp/cc.log"
r=$?; check "a program builds against the installed library ($(head -c 300 "$tmp/cc.log"))" $r
"$tmp/use" "$tmp/m.safetensors" > "$tmp/use.out" 2>&1 && grep -q "round trip exact" "$tmp/use.out"
r=$?; check "and runs: $(cat "$tmp/use.out")" $r
echo "$fails failures"
[ "$fails" -eq 0 ]
