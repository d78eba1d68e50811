#!/usr/bin/env bash
# Every test: install what is missing, build the release preset and run its
# suite, then the same under AddressSanitizer + UndefinedBehaviorSanitizer,
# then the threads and layer tests under ThreadSanitizer, then short smoke runs of the libFuzzer harnesses (scripts/fuzz.sh runs the
# long campaign).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
scripts/build.sh release
ctest --preset release -j "$jobs"
scripts/build.sh asan
ctest --preset asan -j "$jobs"
# ThreadSanitizer over the threads and layer tests (clang, LLVM's OpenMP with
# its TSan annotations, libarcher).
scripts/build.sh tsan
ctest --preset tsan -j "$jobs"
scripts/build.sh fuzz
ctest --preset fuzz -j "$jobs"
