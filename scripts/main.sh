#!/usr/bin/env bash
# The main job: install what the demo needs, build the demo alone (preset
# `demo`: no tests, Python, benchmarks or MPI), then run bnorm-demo: a
# gradient check, then seven experiments on Fashion-MNIST that answer the seed
# documents' questions (experiments 3, 4 and 7 over 5 seeds, run side by side
# on the available cores). The report and its plots go to out/demo/
# (git-ignored; override with BNORM_DEMO_OUT=DIR); scripts/report.sh rewrites
# the committed copy under docs/. Extra arguments go to the demo (e.g. --full
# for the long runs, --seeds N, --jobs N).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh main
scripts/build.sh demo
build/demo/examples/demo/bnorm-demo --out "${BNORM_DEMO_OUT:-out/demo}" "$@"
