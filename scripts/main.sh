#!/usr/bin/env bash
# The main job: install what is missing, build, then walk through the layer
# (bnorm explain) and check every path against the reference (bnorm gradcheck).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
build/release/tools/bnorm explain
echo
build/release/tools/bnorm gradcheck
