#!/usr/bin/env bash
# `pip install .` as a user does it: a fresh clone, a fresh venv that sees
# Debian's NumPy and PyTorch (--system-site-packages, since Debian's pip
# refuses the system site-packages themselves, PEP 668), then bnorm used from
# outside the source tree: the NumPy API and one bnorm.torch forward/backward
# compared with torch.nn.
set -euo pipefail
#
# The build is the package's own CMake build; with ccache on (test.sh turns it
# on), CCACHE_BASEDIR at or above WORK_DIR and BNORM_BUILD_TYPE set to the
# release build's type (ctest does both), its objects come from that build's
# cache rather than a second compile of the whole project.
src=${1:?usage: pip_install.sh SOURCE_DIR [WORK_DIR]}
work=${2:-${TMPDIR:-/tmp}}
mkdir -p "$work"
tmp=$(mktemp -d -p "$work" pip-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
git clone -q "$src" "$tmp/bnorm"
/usr/bin/python3 -m venv --system-site-packages "$tmp/venv"
start=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  "$tmp/venv/bin/pip" install --no-input --quiet "$tmp/bnorm"
echo "pip install: $(( $(date +%s) - start )) s"
rm -rf "$tmp/bnorm"  # nothing may come from the clone any more
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import numpy as np
import torch

import bnorm
import bnorm.torch

site = bnorm.__file__
assert "/venv/lib/" in site and "site-packages" in site, site
x = np.random.default_rng(0).standard_normal((6, 3, 4), dtype=np.float32)
y, mean, invstd = bnorm.batch_norm_train(x)
np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)

torch.manual_seed(0)
x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
ours, theirs = bnorm.torch.BatchNorm2d(3).double(), torch.nn.BatchNorm2d(3).double()
dy = torch.randn(4, 3, 5, 5, dtype=torch.float64)
results = []
for m in (ours, theirs):
    out = m(x)
    grad, = torch.autograd.grad(out, x, dy)
    results.append((out, grad, m.running_var.clone()))
for a, b in zip(*results):
    torch.testing.assert_close(a, b)
print("installed bnorm", site, "works from outside the source tree")
PY
