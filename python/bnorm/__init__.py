"""bnorm: batch normalization on the CPU with the semantics of PyTorch.

The functional API works on NumPy arrays (float32 or float64)::

    import numpy as np
    import bnorm

    x = np.random.default_rng(0).standard_normal((8, 3, 4, 4), dtype=np.float32)
    running_mean = np.zeros(3, np.float32)
    running_var = np.ones(3, np.float32)
    y, mean, invstd = bnorm.batch_norm_train(x, running_mean=running_mean,
                                             running_var=running_var)
    dx, dw, db = bnorm.batch_norm_backward(np.ones_like(y), x, np.ones(3, np.float32),
                                           mean, invstd)

``bnorm.torch`` (loaded on first use, needs PyTorch) holds BatchNorm1d/2d/3d,
drop-in replacements for torch.nn.BatchNorm1d/2d/3d backed by these kernels.
"""

import importlib

from ._bnorm import (
    __version__,
    batch_norm,
    batch_norm_backward,
    batch_norm_backward_eval,
    batch_norm_train,
    batch_renorm_backward,
    batch_renorm_train,
)

__all__ = [
    "batch_norm",
    "batch_norm_train",
    "batch_norm_backward",
    "batch_norm_backward_eval",
    "batch_renorm_train",
    "batch_renorm_backward",
]


def __getattr__(name):
    # Importing PyTorch takes a second and is optional, so bnorm.torch is
    # loaded only when asked for (import bnorm.torch works as well).
    if name == "torch":
        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
