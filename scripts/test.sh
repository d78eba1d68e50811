#!/usr/bin/env bash
# Every test: install what is missing, build the release preset and run its
# suite, then the same under AddressSanitizer + UndefinedBehaviorSanitizer,
# then the threads and layer tests under ThreadSanitizer, then short smoke
# runs of the libFuzzer harnesses (scripts/fuzz.sh runs the long campaign),
# then the tensors past 2^31 elements where memory allows.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
scripts/build.sh release
ctest --preset release -j "$jobs" -LE large
scripts/build.sh asan
ctest --preset asan -j "$jobs" -LE large
# ThreadSanitizer over the threads and layer tests (clang, LLVM's OpenMP with
# its TSan annotations, libarcher).
scripts/build.sh tsan
ctest --preset tsan -j "$jobs"
scripts/build.sh fuzz
ctest --preset fuzz -j "$jobs"
# Tensors past 2^31 elements (label "large"): 17 GB and about 4 minutes on the
# 2-core machine, so only with that much memory available (the test also
# skips itself below BNORM_LARGE_MIN_GB); BNORM_LARGE_TESTS=0 turns it off.
available_gb=$(awk '/^MemAvailable:/ {print int($2 / 1048576)}' /proc/meminfo)
if [ "${BNORM_LARGE_TESTS:-1}" != 0 ] && [ "$available_gb" -ge 19 ]; then
  ctest --preset release -L large
else
  echo "test.sh: large-tensor tests not run (${available_gb} GB available, 19 needed," \
    "BNORM_LARGE_TESTS=${BNORM_LARGE_TESTS:-1})"
fi
