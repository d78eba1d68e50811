"""Beyond PyTorch's batch norm: the running-variance convention, Batch
Renormalization and ghost batch norm in the NumPy API.

Oracles: hand-computed values, PyTorch autograd in float64 on Algorithm 1
with r and d detached (the stop-gradient), and torch's batch_norm applied
group by group. Tolerances in units of the dtype's epsilon times the size of
the terms (oracle.check).
"""

import numpy as np
import pytest
import torch

import bnorm
import oracle

DTYPES = [np.float32, np.float64]


def _tensor(shape, dtype, seed, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def _channels_last(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def _from_channels_last(a):
    return np.moveaxis(a, -1, 1)


# ---- running-variance convention ------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unbiased", [True, False])
def test_running_var_by_hand(dtype, unbiased):
    # One channel holding {1, 2, 3, 6}: mean 3, biased var 3.5, unbiased 14/3.
    x = np.array([1, 2, 3, 6], dtype).reshape(4, 1)
    rm, rv = np.array([1.0], dtype), np.array([1.0], dtype)
    bnorm.batch_norm(x, rm, rv, training=True, momentum=0.25, unbiased_running_var=unbiased)
    var = 14 / 3 if unbiased else 3.5
    assert rm[0] == pytest.approx(0.75 + 0.25 * 3, rel=4 * np.finfo(dtype).eps)
    assert rv[0] == pytest.approx(0.75 + 0.25 * var, rel=4 * np.finfo(dtype).eps)
    rm2, rv2 = np.array([1.0], dtype), np.array([1.0], dtype)
    bnorm.batch_norm_train(x, running_mean=rm2, running_var=rv2, momentum=0.25,
                           unbiased_running_var=unbiased)
    assert rv2[0] == rv[0]


# ---- Batch Renormalization --------------------------------------------------


def _renorm_torch(x, weight, bias, running_mean, running_var, rmax, dmax, momentum, eps,
                  unbiased, dy):
    """Algorithm 1 in float64 torch, r and d detached; returns outputs and grads."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    axes = oracle.reduce_axes(x.ndim)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    mu_b = xt.mean(dim=axes)
    var_b = ((xt - mu_b.reshape(shape)) ** 2).mean(dim=axes)
    sigma_b = torch.sqrt(var_b + eps)
    rm = torch.tensor(running_mean, dtype=torch.float64)
    rv = torch.tensor(running_var, dtype=torch.float64)
    sigma = torch.sqrt(rv + eps)
    r = torch.clamp(sigma_b / sigma, 1 / rmax, rmax).detach()
    d = torch.clamp((mu_b - rm) / sigma, -dmax, dmax).detach()
    x_hat = (xt - mu_b.reshape(shape)) / sigma_b.reshape(shape) * r.reshape(shape) + d.reshape(shape)
    y = wt.reshape(shape) * x_hat + bt.reshape(shape)
    (y * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    v = var_b * m / (m - 1) if unbiased else var_b
    new_rm = rm + momentum * (mu_b.detach() - rm)
    new_rv = rv + momentum * (v.detach() - rv)
    return dict(y=y.detach().numpy(), mean=mu_b.detach().numpy(),
                invstd=(1 / sigma_b).detach().numpy(), r=r.numpy(), d=d.numpy(),
                running_mean=new_rm.numpy(), running_var=new_rv.numpy(),
                dx=xt.grad.numpy(), dweight=wt.grad.numpy(), dbias=bt.grad.numpy())


RENORM_SHAPES = [(8, 3), (4, 5, 6), (3, 2, 4, 5), (2, 3, 2, 3, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RENORM_SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("clipped", [False, True])
@pytest.mark.parametrize("unbiased", [True, False])
def test_batch_renorm_against_torch(dtype, shape, channels_last, clipped, unbiased):
    seed = hash((shape, channels_last, clipped, unbiased)) % 2**32
    x = _tensor(shape, dtype, seed, 0.4, 1.7)
    dy = _tensor(shape, dtype, seed + 1)
    c = shape[1]
    w = _tensor((c,), dtype, seed + 2, 1.0, 0.5)
    b = _tensor((c,), dtype, seed + 3)
    mean, var, _ = oracle.batch_moments(x)
    if clipped:  # sigma 10x sigma_B and the mean 8 sigma away: r = 1/3, d = +-5
        rv0 = (var * 100).astype(dtype)
        rm0 = (mean + 8 * np.sqrt(var) * 10 * np.where(np.arange(c) % 2 == 0, 1, -1)).astype(dtype)
    else:
        rv0 = (var * 1.2).astype(dtype)
        rm0 = (mean + 0.3 * np.sqrt(var)).astype(dtype)
    want = _renorm_torch(x, w, b, rm0, rv0, 3.0, 5.0, 0.05, 1e-5, unbiased, dy)
    if clipped:
        assert np.allclose(want["r"], 1 / 3) and np.allclose(np.abs(want["d"]), 5)
    rm, rv = rm0.copy(), rv0.copy()
    xin = _channels_last(x) if channels_last else x
    y, save_mean, save_invstd, r, d = bnorm.batch_renorm_train(
        xin, rm, rv, w, b, rmax=3.0, dmax=5.0, momentum=0.05, channels_last=channels_last,
        unbiased_running_var=unbiased)
    if channels_last:
        y = _from_channels_last(y)
    scale_y = float(np.max(np.abs(w) * (np.abs(want["r"]) * (np.abs(x.astype(np.float64))
                                                             .max() + np.abs(mean).max())
                                        * want["invstd"].max() + 5) + np.abs(b)))
    oracle.check("renorm y", dtype, y, want["y"], scale_y, tolerance=16)
    oracle.check("renorm r", dtype, r, want["r"], float(np.max(want["r"])))
    oracle.check("renorm d", dtype, d, want["d"], 1.0 + float(np.max(np.abs(want["d"]))))
    oracle.check("renorm save_invstd", dtype, save_invstd, want["invstd"],
                 float(np.max(want["invstd"])))
    oracle.check("renorm running_mean", dtype, rm, want["running_mean"],
                 float(np.max(np.abs(rm0)) + np.max(np.abs(mean))))
    oracle.check("renorm running_var", dtype, rv, want["running_var"],
                 float(np.max(rv0) + np.max(var) * 2))
    dyin = _channels_last(dy) if channels_last else dy
    dx, dw, db = bnorm.batch_renorm_backward(dyin, xin, w, save_mean, save_invstd, r, d,
                                             channels_last=channels_last)
    if channels_last:
        dx = _from_channels_last(dx)
    scales = oracle.Scales(x, dy, w * want["r"], b, mean, want["invstd"])
    oracle.check("renorm grad_input", dtype, dx, want["dx"], scales.dx_batch, tolerance=16)
    oracle.check("renorm grad_weight", dtype, dw, want["dweight"],
                 3 * scales.dweight + 5 * scales.dbias, tolerance=16)
    oracle.check("renorm grad_bias", dtype, db, want["dbias"], scales.dbias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_renorm_rmax1_dmax0_is_batch_norm_bitwise(dtype, channels_last):
    x = _tensor((6, 4, 3, 5), dtype, 11, -0.5, 2.0)
    dy = _tensor(x.shape, dtype, 12)
    if channels_last:
        x, dy = _channels_last(x), _channels_last(dy)
    w, b = _tensor((4,), dtype, 13, 1.0, 0.3), _tensor((4,), dtype, 14)
    rm1, rv1 = np.full(4, 3.0, dtype), np.full(4, 9.0, dtype)
    rm2, rv2 = rm1.copy(), rv1.copy()
    y1, m1, s1, r, d = bnorm.batch_renorm_train(x, rm1, rv1, w, b, rmax=1.0, dmax=0.0,
                                                momentum=0.2, channels_last=channels_last)
    y2, m2, s2 = bnorm.batch_norm_train(x, w, b, rm2, rv2, momentum=0.2,
                                        channels_last=channels_last)
    for a, e in [(y1, y2), (m1, m2), (s1, s2), (rm1, rm2), (rv1, rv2)]:
        assert a.tobytes() == e.tobytes()
    assert np.all(r == 1) and np.all(d == 0)
    g1 = bnorm.batch_renorm_backward(dy, x, w, m1, s1, r, d, channels_last=channels_last)
    g2 = bnorm.batch_norm_backward(dy, x, w, m2, s2, channels_last=channels_last)
    for a, e in zip(g1, g2):
        assert a.tobytes() == e.tobytes()


@pytest.mark.parametrize("kwargs, message", [
    (dict(rmax=0.5), "rmax must be finite and >= 1, got 0.5"),
    (dict(rmax=float("nan")), "rmax must be finite and >= 1"),
    (dict(dmax=-1.0), "dmax must be finite and >= 0, got -1"),
    (dict(momentum=1.5), "momentum must be in [0, 1]"),
])
def test_batch_renorm_errors_write_nothing(kwargs, message):
    x = _tensor((4, 3), np.float32, 1)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        bnorm.batch_renorm_train(x, rm, rv, **kwargs)
    assert np.all(rm == 0) and np.all(rv == 1)


def test_batch_renorm_needs_running_stats():
    x = _tensor((4, 3), np.float32, 1)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        bnorm.batch_renorm_train(x, None, np.ones(3, np.float32))


# ---- Ghost batch norm ---------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, vbs", [(12, 4), (7, 3), (10, 4), (5, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ghost_equals_torch_group_by_group(dtype, n, vbs, channels_last):
    shape = (n, 3, 2, 3)
    x = _tensor(shape, dtype, n * 10 + vbs, 0.3, 1.4)
    dy = _tensor(shape, dtype, n * 10 + vbs + 1)
    w, b = _tensor((3,), dtype, 5, 1.0, 0.5), _tensor((3,), dtype, 6)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    xin = _channels_last(x) if channels_last else x
    y, mean, invstd = bnorm.batch_norm_train(xin, w, b, rm, rv, momentum=0.2,
                                             channels_last=channels_last, virtual_batch_size=vbs)
    groups = -(-n // vbs)
    assert mean.shape == (groups, 3) and invstd.shape == (groups, 3)
    dyin = _channels_last(dy) if channels_last else dy
    dx, dw, db = bnorm.batch_norm_backward(dyin, xin, w, mean, invstd,
                                           channels_last=channels_last, virtual_batch_size=vbs)
    if channels_last:
        y, dx = _from_channels_last(y), _from_channels_last(dx)
    # torch, float64, group after group with the running statistics carried.
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    outs = [torch.nn.functional.batch_norm(xt[i:i + vbs], trm, trv, wt, bt, training=True,
                                           momentum=0.2) for i in range(0, n, vbs)]
    yt = torch.cat(outs)
    (yt * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    eps = np.finfo(dtype).eps
    scale = float(np.max(np.abs(yt.detach().numpy()))) + 1
    oracle.check("ghost y", dtype, y, yt.detach().numpy(), scale, tolerance=16)
    oracle.check("ghost running_mean", dtype, rm, trm.numpy(), 2.0)
    oracle.check("ghost running_var", dtype, rv, trv.numpy(), 4.0)
    dscale = float(np.max(np.abs(xt.grad.numpy()))) + float(np.max(np.abs(dy))) * 4
    oracle.check("ghost grad_input", dtype, dx, xt.grad.numpy(), dscale * 4, tolerance=16)
    oracle.check("ghost grad_weight", dtype, dw, wt.grad.numpy(),
                 float(np.abs(dy).sum()) * 3, tolerance=16)
    oracle.check("ghost grad_bias", dtype, db, bt.grad.numpy(), float(np.abs(dy).sum()))
    assert eps > 0


@pytest.mark.parametrize("n, vbs, message", [
    (6, 1, "virtual_batch_size must be >= 2, got 1"),
    (6, 0, "virtual_batch_size must be >= 2, got 0"),
    (7, 3, "the last group holds 1 sample"),
])
def test_ghost_errors_write_nothing(n, vbs, message):
    x = _tensor((n, 3), np.float32, 1)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=message):
        bnorm.batch_norm_train(x, None, None, rm, rv, virtual_batch_size=vbs)
    assert np.all(rm == 0) and np.all(rv == 1)
    with pytest.raises(ValueError, match="virtual_batch_size|last group|shape"):
        bnorm.batch_norm_backward(x, x, None, np.zeros((3, 3), np.float32),
                                  np.ones((3, 3), np.float32), virtual_batch_size=vbs)
