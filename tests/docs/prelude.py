# What the documentation's Python fragments (marked <!-- docs-test: prelude -->)
# may use without defining it: an NCHW batch as NumPy arrays and as tensors.
import numpy as np

import bnorm

_rng = np.random.default_rng(0)
x = _rng.standard_normal((8, 3, 4, 4), dtype=np.float32)     # (N, C, H, W)
dy = _rng.standard_normal(x.shape, dtype=np.float32)
w, b = np.full(3, 1.5, np.float32), np.full(3, 0.25, np.float32)
rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)     # running statistics
