#!/usr/bin/env bash
# Installs the Debian packages bnorm uses, skipping those already installed.
# Needs root (or sudo).
#   scripts/install-deps.sh main   what the main job (scripts/main.sh) needs:
#                                  the compiler, the library, the demo
#   scripts/install-deps.sh [all]  everything: tests, sanitizers, fuzzing,
#                                  Python and PyTorch, MPI, benchmarks
set -euo pipefail
group=${1:-all}

main=(
  # the library: compiler, build, vectorized kernels (libgomp comes with g++)
  cmake ninja-build g++ libhwy-dev
  # the demo (examples/demo): training stack, command line, data, plots, graph
  libeigen3-dev zlib1g-dev libcli11-dev libfmt-dev dataset-fashion-mnist gnuplot-nox graphviz
)
rest=(
  # tests and the CLI; ccache lets the pip-install test reuse the release build
  pkg-config libgtest-dev libgmock-dev libbenchmark-dev ccache
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
  # benchmark anchors (never linked by the library)
  libdnnl-dev ocl-icd-opencl-dev libtorch-dev
)
case "$group" in
  main) packages=("${main[@]}") ;;
  all) packages=("${main[@]}" "${rest[@]}") ;;
  *) echo "usage: $0 [main|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages of '$group' present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps ($group): installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
