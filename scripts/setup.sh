#!/usr/bin/env bash
# Installs the Debian packages mfres needs, only those that are missing.
# Safe to run repeatedly; does nothing when everything is present.
set -euo pipefail

packages=(
  build-essential pkg-config
  libdnnl-dev          # oneDNN: CPU convolution, batch norm, pooling
  libopenblas-dev      # CBLAS for dense linear algebra
  liblapacke-dev       # LAPACK (least squares in the theory lab)
  zlib1g-dev           # .gz data files
  libsqlite3-dev sqlite3   # the run store (mfres store/sweep/report) and its command-line client
  check                # C unit-test framework
  dataset-fashion-mnist
  python3-torch python3-numpy   # reference implementation for the tests
  gnuplot-nox          # plots
  time                 # peak-memory measurement in bench/
  clang                # libFuzzer for make check-fuzz (CI)
  libopenmpi-dev openmpi-bin   # data-parallel training (mpirun -np N mfres train)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all dependencies present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
