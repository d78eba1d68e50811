"""float16 input through the NumPy API against torch.nn.functional.batch_norm in float64.

The oracle sees the float16 input exactly (widened to float64). bnorm computes
in float32 and rounds y and dx once to float16, so each value must be within
one rounding of float16 (unit roundoff 2^-11, relative) of torch's float64
value, plus the float32 computation's own error (FLOAT32_TOL of the largest
value) and half the smallest float16 subnormal (2^-25) for tiny values;
statistics and parameter gradients are float32 and must be within float32's
bound.
"""

import bnorm
import numpy as np
import pytest
import torch
import torch.nn.functional as F

U16 = 2.0 ** -11
SUBNORMAL = 2.0 ** -25
FLOAT32_TOL = 2e-5  # the float32 path's bound, relative to the largest value


def within_one_rounding(got, want):
    got = got.astype(np.float64)
    bound = U16 * np.abs(want) + FLOAT32_TOL * np.abs(want).max() + SUBNORMAL
    ratio = np.abs(got - want) / bound
    return float(ratio.max())


def float32_close(got, want):
    assert got.dtype == np.float32
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def torch_reference(x16, dy16, w, b, channels_last):
    """y, mean, invstd and the gradients from torch in float64 on the float16 values."""
    x = torch.from_numpy(x16.astype(np.float64))
    dy = torch.from_numpy(dy16.astype(np.float64))
    if channels_last:  # stored (N, *spatial, C): torch wants (N, C, *spatial)
        perm = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        x, dy = x.permute(perm), dy.permute(perm)
    x.requires_grad_(True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    y = F.batch_norm(x, None, None, wt, bt, training=True, eps=1e-5)
    y.backward(dy)
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.detach().mean(axes)
    var = x.detach().var(axes, unbiased=False)
    out = [y.detach(), x.grad]
    if channels_last:
        inv = (0,) + tuple(range(2, x.ndim)) + (1,)
        out = [t.permute(inv) for t in out]
    return ([t.contiguous().numpy() for t in out]
            + [mean.numpy(), (1 / torch.sqrt(var + 1e-5)).numpy(), var.numpy(),
               wt.grad.numpy(), bt.grad.numpy()])


@pytest.mark.parametrize("shape", [(8, 3, 5, 5), (64, 7), (4, 16, 33), (2, 5, 3, 4, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_train_and_backward_match_torch_float64(shape, channels_last):
    rng = np.random.default_rng(sum(shape) + channels_last)
    if channels_last:
        shape = (shape[0],) + shape[2:] + (shape[1],)
    c = shape[-1] if channels_last else shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float16)
    dy = rng.standard_normal(shape).astype(np.float16)
    w = (rng.standard_normal(c) * 0.5 + 1).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)

    y, mean, invstd = bnorm.batch_norm_train(x, w, b, rm, rv, momentum=0.1,
                                             channels_last=channels_last)
    dx, dw, db = bnorm.batch_norm_backward(dy, x, w, mean, invstd, channels_last=channels_last)
    y_ref, dx_ref, mean_ref, invstd_ref, var_ref, dw_ref, db_ref = torch_reference(
        x, dy, w, b, channels_last)

    assert y.dtype == dx.dtype == np.float16
    assert y.shape == dx.shape == x.shape
    assert within_one_rounding(y, y_ref) <= 1
    # dx: the float32 path's dx bound is 10x its y bound, relative to the
    # size of dx's terms, weight * invstd * dy.
    scale = np.abs(dy.astype(np.float64)).max() * np.abs(w * invstd_ref).max()
    bound = U16 * np.abs(dx_ref) + 10 * FLOAT32_TOL * scale + SUBNORMAL
    assert float((np.abs(dx.astype(np.float64) - dx_ref) / bound).max()) <= 1
    for got, want in ((mean, mean_ref), (invstd, invstd_ref), (dw, dw_ref), (db, db_ref)):
        assert float32_close(got, want) < FLOAT32_TOL
    m = x.size // c
    assert float32_close(rm, 0.1 * mean_ref) < FLOAT32_TOL
    assert float32_close(rv, 0.9 + 0.1 * var_ref * m / (m - 1)) < FLOAT32_TOL


def test_inference_and_its_gradient():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4, 7)).astype(np.float16)
    dy = rng.standard_normal((6, 4, 7)).astype(np.float16)
    rm = rng.standard_normal(4).astype(np.float32)
    rv = (rng.random(4) + 0.5).astype(np.float32)
    w = rng.standard_normal(4).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    y = bnorm.batch_norm(x, rm, rv, w, b, training=False)
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    yt = F.batch_norm(xt, torch.from_numpy(rm.astype(np.float64)),
                      torch.from_numpy(rv.astype(np.float64)),
                      torch.from_numpy(w.astype(np.float64)),
                      torch.from_numpy(b.astype(np.float64)), training=False)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    assert y.dtype == np.float16
    assert within_one_rounding(y, yt.detach().numpy()) <= 1
    dx, dw, db = bnorm.batch_norm_backward_eval(dy, x, w, rm, rv)
    assert dx.dtype == np.float16 and dw.dtype == db.dtype == np.float32
    assert within_one_rounding(dx, xt.grad.numpy()) <= 1


def test_float16_needs_float32_parameters_and_writes_nothing_on_error():
    x = np.ones((4, 3), np.float16)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    for name, kwargs in (("weight", dict(weight=np.ones(3, np.float16))),
                         ("bias", dict(bias=np.ones(3, np.float64))),
                         ("running_mean", dict(running_mean=np.zeros(3, np.float16),
                                               running_var=rv))):
        with pytest.raises(ValueError, match=f"{name} must have dtype float32 "
                                             r"\(per-channel arrays of float16 input"):
            bnorm.batch_norm_train(x, **kwargs)
    with pytest.raises(ValueError, match="grad_output must have dtype float16 like input"):
        bnorm.batch_norm_backward(np.ones((4, 3), np.float32), x, None, np.zeros(3, np.float32),
                                  np.ones(3, np.float32))
    assert (rv == 1).all()


def test_nan_in_float16_input_stays_in_its_channel():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 3, 8)).astype(np.float16)
    x[3, 1, 5] = np.nan
    y, mean, invstd = bnorm.batch_norm_train(x)
    assert np.isnan(y[:, 1]).all() and np.isnan(mean[1])
    assert np.isfinite(y[:, [0, 2]]).all() and np.isfinite(mean[[0, 2]]).all()
