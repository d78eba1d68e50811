#!/usr/bin/env bash
# Installs the Debian packages bnorm's build, tests, benchmark and demo use,
# skipping those already installed. Needs root (or sudo).
set -euo pipefail

packages=(
  # build and test
  cmake ninja-build g++ pkg-config libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev libfmt-dev
  # vectorized kernels and threads (libgomp comes with g++)
  libhwy-dev
  # Python module and its oracle
  python3-dev pybind11-dev python3-numpy python3-pytest python3-torch python3-torchvision python3-onnx
  # reliability: libFuzzer harnesses, ThreadSanitizer with LLVM's OpenMP, property tests
  clang libfuzzer-14-dev libomp-dev python3-hypothesis
  # ONNX conformance test: the BatchNormalization cases (read with python3-onnx)
  libonnx-testdata
  # pip install . (setuptools backend driving CMake), python3 -m build
  python3-pip python3-setuptools python3-wheel python3-venv python3-build
  # synchronized batch norm
  libopenmpi-dev openmpi-bin
  # training demo
  libeigen3-dev zlib1g-dev dataset-fashion-mnist gnuplot-nox graphviz
  # benchmark anchors (never linked by the library)
  libdnnl-dev ocl-icd-opencl-dev libtorch-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
