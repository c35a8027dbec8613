#!/usr/bin/env bash
# Packs this machine's build dependencies of mfres (oneDNN, OpenBLAS with
# LAPACKE, SQLite, Check with subunit, zlib: headers, libraries and the shared
# libraries they load) into gpu-deps/kit.tar.xz, for a GPU machine where they
# are not installed and nothing can be installed. bench/gpu/run.sh unpacks it
# into build/deps-root when its probe finds a dependency missing, builds
# against it, and runs mfres with it on LD_LIBRARY_PATH (mfres only: PyTorch
# keeps the machine's own libraries).
#
#   bash bench/gpu/pack_deps.sh      then carry gpu-deps with the run (about 45 MB:
#                                    the kit and Fashion-MNIST for the GPU tests)
#
# gpu-deps/ is added to .git/info/exclude (ignored, so it travels only when
# carried). Debian packages; Debian's alternatives (cblas.h, libblas.so.3,
# liblapack.so.3 -> OpenBLAS) are made plain links inside the kit.
set -euo pipefail
cd "$(dirname "$0")/../.."
pkgs="libdnnl-dev libdnnl2 libopenblas0-pthread libopenblas-pthread-dev liblapacke liblapacke-dev libtmglib3
      libgfortran5 libquadmath0 libsqlite3-dev libsqlite3-0 check libsubunit-dev libsubunit0 zlib1g-dev zlib1g
      ocl-icd-libopencl1"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || { echo "pack_deps: $p is not installed here (make setup installs it)" >&2; exit 1; }
  dpkg -L "$p" | while read -r f; do
    case $f in /usr/share/*|/etc/*) continue;; esac
    # Files and links; static archives only where nothing else links (Check)
    case $f in *.a) case $f in */libcheck_pic.a|*/libsubunit.a) ;; *) continue;; esac;; esac
    [ -L "$f" ] || [ -f "$f" ] || continue
    d=${f#/}
    case $d in lib/*|lib64/*) d=usr/$d;; esac  # merged /usr: /lib is /usr/lib
    mkdir -p "$stage/$(dirname "$d")"
    cp -a "$f" "$stage/$d"
  done
done
# Debian installs these through alternatives, outside the packages' file lists.
multi=usr/lib/x86_64-linux-gnu
mkdir -p "$stage/$multi" "$stage/usr/include/x86_64-linux-gnu"
ln -sfn openblas-pthread/cblas.h "$stage/usr/include/x86_64-linux-gnu/cblas.h"
ln -sfn openblas-pthread/openblas_config.h "$stage/usr/include/x86_64-linux-gnu/openblas_config.h"
for l in libblas.so.3 liblapack.so.3 libopenblas.so.0 libblas.so liblapack.so libopenblas.so; do
  ln -sfn "openblas-pthread/$l" "$stage/$multi/$l"
done
# A link to an absolute path would point outside the kit once unpacked: made relative.
find "$stage" -type l -lname '/*' | while read -r l; do
  t=$(readlink "$l"); t=${t#/}
  case $t in lib/*|lib64/*) t=usr/$t;; esac
  ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$stage/$t")" "$l"
done
bad=$(find "$stage" -type l -lname '/*' | sed "s|^$stage||")
[ -z "$bad" ] || { echo "pack_deps: absolute links in the kit: $bad" >&2; exit 1; }
mkdir -p gpu-deps
grep -qx '/gpu-deps/' .git/info/exclude 2>/dev/null || echo '/gpu-deps/' >> .git/info/exclude
tar -C "$stage" -cJf gpu-deps/kit.tar.xz usr
# Fashion-MNIST (30 MB) for test_gpu_model's training runs: the GPU machine has no data sets.
mkdir -p gpu-deps/fashion-mnist
cp /usr/share/datasets/fashion-mnist/*-ubyte.gz gpu-deps/fashion-mnist/
echo "gpu-deps/fashion-mnist: $(du -sh gpu-deps/fashion-mnist | cut -f1)"
echo "gpu-deps/kit.tar.xz: $(du -h gpu-deps/kit.tar.xz | cut -f1) ($(tar -tJf gpu-deps/kit.tar.xz | wc -l) entries;" \
     "$(du -sh "$stage" | cut -f1) unpacked)"
