"""Comparisons against PyTorch with tolerances in units of float epsilon.

Every difference is divided by eps(dtype) times a scale: the largest
magnitude of the terms that the quantity is computed from. A float
computation that is off by a few roundings of its largest term stays below a
small constant; a wrong formula lands far above it. The largest ratios seen
are kept in ERRORS and printed at the end of the run (conftest.py).
"""

import numpy as np

# Largest allowed |bnorm - torch| / (eps * scale). Both sides round each term
# a few times and sum over at most a few hundred values per channel.
TOLERANCE = 8.0

# (dtype name, quantity) -> (largest ratio to eps * scale, largest |difference|)
ERRORS = {}


def _record(dtype, quantity, ratio, err):
    key = (np.dtype(dtype).name, quantity)
    old = ERRORS.get(key, (0.0, 0.0))
    ERRORS[key] = (max(old[0], ratio), max(old[1], err))


def check(quantity, dtype, got, ref, scale, tolerance=TOLERANCE):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{quantity}: shape {got.shape} != {ref.shape}"
    assert np.all(np.isfinite(got)), f"{quantity}: non-finite values"
    err = float(np.max(np.abs(got - ref))) if got.size else 0.0
    eps = float(np.finfo(dtype).eps)
    ratio = err / (eps * scale) if scale > 0 else (0.0 if err == 0 else np.inf)
    _record(dtype, quantity, ratio, err)
    assert ratio <= tolerance, (
        f"{quantity} ({np.dtype(dtype).name}): max |bnorm - torch| = {err:.3g} is "
        f"{ratio:.1f} eps x scale {scale:.3g}, allowed {tolerance}")


def reduce_axes(ndim, channels_last=False):
    """Axes of everything but the channel for an (N, C, *spatial) array."""
    return tuple(a for a in range(ndim) if a != (ndim - 1 if channels_last else 1))


def per_channel(v, ndim):
    """A (C,) vector shaped to broadcast against (N, C, *spatial)."""
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


class Scales:
    """The magnitudes a batch norm's outputs are built from, in float64.

    mean, invstd: the statistics that normalize (batch or running).
    """

    def __init__(self, x, dy, weight, bias, mean, invstd):
        x = np.asarray(x, np.float64)
        dy = np.asarray(dy, np.float64)
        nd = x.ndim
        axes = reduce_axes(nd)
        m = x.size // x.shape[1]
        c = x.shape[1]
        w = np.abs(np.asarray(weight, np.float64)) if weight is not None else np.ones(c)
        b = np.abs(np.asarray(bias, np.float64)) if bias is not None else np.zeros(c)
        mu, inv = per_channel(mean, nd), per_channel(invstd, nd)
        w, b = per_channel(w, nd), per_channel(b, nd)
        # |x - mean| * invstd, counting the rounding of both operands
        x_hat = (np.abs(x) + np.abs(mu)) * inv
        self.y = float(np.max(w * x_hat + b))
        mean_dy = np.abs(dy).sum(axis=axes, keepdims=True) / m
        mean_dy_xhat = (np.abs(dy) * x_hat).sum(axis=axes, keepdims=True) / m
        self.dx_batch = float(np.max(w * inv * (np.abs(dy) + mean_dy + x_hat * mean_dy_xhat)))
        self.dx_frozen = float(np.max(w * inv * np.abs(dy)))
        self.dweight = float(np.max((np.abs(dy) * x_hat).sum(axis=axes)))
        self.dbias = float(np.max(np.abs(dy).sum(axis=axes)))


def batch_moments(x):
    """Per-channel mean, biased and unbiased variance of (N, C, *spatial), float64."""
    x = np.asarray(x, np.float64)
    axes = reduce_axes(x.ndim)
    m = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    var = ((x - per_channel(mean, x.ndim)) ** 2).mean(axis=axes)
    unbiased = var * m / (m - 1) if m > 1 else np.full_like(var, np.nan)
    return mean, var, unbiased


# Lines for the end-of-run summary (figures a test measured).
NOTES = []
