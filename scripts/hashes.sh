#!/usr/bin/env bash
# One CRC-32 per output of every public entry point (C++, the NumPy module,
# the torch operators and modules) over fixed inputs, on stdout. A change
# that must not alter results prints the same lines before and after it, on
# the same machine and target:
#   scripts/hashes.sh > before.txt; <change, rebuild>; scripts/hashes.sh | diff before.txt -
# Uses the release build (scripts/build.sh release).
set -euo pipefail
cd "$(dirname "$0")/.."
build/release/tools/hashes/bnorm_hashes "$@"
PYTHONPATH=build/release/python OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
  /usr/bin/python3 tools/hashes/hashes.py
