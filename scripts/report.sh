#!/usr/bin/env bash
# Regenerates the committed demo report, docs/experiments.md and its figures
# in docs/experiments/, on purpose (scripts/main.sh writes to out/demo/ and
# leaves the checkout unmodified). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh main
scripts/build.sh demo
rm -rf docs/experiments
build/demo/examples/demo/bnorm-demo --out docs "$@"
