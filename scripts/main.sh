#!/usr/bin/env bash
# The main job: install what is missing, build, then `bnorm demo`: a gradient
# check, then seven experiments on Fashion-MNIST that answer the seed documents'
# questions. It writes the report and its plots to docs/experiments.md and
# docs/experiments/ (override with BNORM_DEMO_OUT=DIR); extra arguments go to
# the demo (e.g. --full for the long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
build/release/tools/bnorm demo --out "${BNORM_DEMO_OUT:-docs}" "$@"
