"""Property tests (Hypothesis): bnorm's NumPy API and bnorm.torch against
torch.nn.functional.batch_norm evaluated in float64 on the same (rounded)
inputs, over generated shapes, layouts, dtypes, options and values, and the
rejection cases (ValueError, running statistics unchanged).

Tolerances: |bnorm - oracle| <= K * eps(dtype) * (the magnitude of the terms
the value is computed from), with K growing with log2 of the reduction size.
Example counts are bounded (max_examples) to keep the suite to seconds.
"""

import math

import bnorm
import bnorm.torch as bt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, 5))
    c = draw(st.integers(1, 4))
    spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=2)))
    channels_last = len(spatial) >= 1 and draw(st.booleans())
    shape = (n, c) + spatial
    # Per-channel offset and scale (conditioning), values in [-1, 1) around
    # them, sometimes a constant channel.
    offset = draw(st.floats(-1e3, 1e3))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e2]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = offset + scale * rng.uniform(-1, 1, shape)
    if draw(st.booleans()):
        x[:, draw(st.integers(0, c - 1))] = offset
    x = x.astype(dtype)
    if channels_last:  # stored as (N, *spatial, C)
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    affine = draw(st.booleans())
    weight = rng.normal(1, 0.5, c).astype(dtype) if affine else None
    bias = rng.normal(0, 1, c).astype(dtype) if affine else None
    track = draw(st.booleans())
    rm = rng.normal(0, 1, c).astype(dtype) if track else None
    rv = rng.uniform(0.25, 2, c).astype(dtype) if track else None
    momentum = draw(st.sampled_from([None, 0.0, 0.1, 1.0, 0.37]))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.5]))
    training = draw(st.booleans()) or not track
    batches = draw(st.integers(1, 5))
    return dict(x=x, weight=weight, bias=bias, rm=rm, rv=rv, momentum=momentum, eps=eps,
                training=training, channels_last=channels_last, batches=batches, dtype=dtype)


def to_ncx(a, channels_last):
    """(N, *spatial, C) -> (N, C, *spatial)."""
    return np.moveaxis(a, -1, 1) if channels_last else a


def t64(a):
    return None if a is None else torch.from_numpy(np.asarray(a, np.float64).copy())


def oracle(case):
    """F.batch_norm in float64: y (N, C, *spatial), running statistics."""
    x = t64(to_ncx(case["x"], case["channels_last"]))
    rm, rv = t64(case["rm"]), t64(case["rv"])
    momentum = case["momentum"]
    if momentum is None and case["training"] and rm is not None:
        momentum = 1.0 / case["batches"]  # what torch.nn's modules pass for momentum=None
    y = F.batch_norm(x, rm, rv, t64(case["weight"]), t64(case["bias"]), case["training"],
                     0.0 if momentum is None else momentum, case["eps"])
    return y.numpy(), None if rm is None else rm.numpy(), None if rv is None else rv.numpy()


def bound(case, values):
    """K * eps * magnitude, for an output built from `values` (float64)."""
    m = case["x"].size // case["x"].shape[-1 if case["channels_last"] else 1]
    k = 16 + 4 * math.log2(max(m, 2))
    return k * np.finfo(case["dtype"]).eps * values


def expect_close(name, got, want, tol):
    got = np.asarray(got, np.float64)
    assert np.all(np.isfinite(got)), f"{name}: non-finite values"
    err = np.abs(got - want)
    worst = int(np.argmax(err - tol)) if err.size else 0
    assert np.all(err <= tol), (f"{name}: |got - want| = {err.flat[worst]:.3g} > "
                                f"{np.asarray(tol).flat[worst]:.3g} at {worst}")


def y_scale(case, want_rm, want_rv):
    """|weight| * (|x| + |mean|) * invstd + |bias| + |y|, per element."""
    x = to_ncx(case["x"], case["channels_last"]).astype(np.float64)
    nd = x.ndim
    axes = tuple(a for a in range(nd) if a != 1)
    shape = (1, -1) + (1,) * (nd - 2)
    if case["training"]:
        mean = x.mean(axis=axes, keepdims=True)
        var = x.var(axis=axes, keepdims=True)
        spread = np.abs(x).max(axis=axes, keepdims=True)
    else:
        mean = case["rm"].astype(np.float64).reshape(shape)
        var = case["rv"].astype(np.float64).reshape(shape)
        spread = np.abs(mean)
    invstd = 1 / np.sqrt(var + case["eps"])
    c = x.shape[1]
    w = np.ones(c) if case["weight"] is None else np.abs(case["weight"].astype(np.float64))
    b = np.zeros(c) if case["bias"] is None else np.abs(case["bias"].astype(np.float64))
    w, b = w.reshape(shape), b.reshape(shape)
    return w * (np.abs(x) + spread + np.abs(mean)) * invstd + b


@SETTINGS
@given(cases())
def test_numpy_api_matches_torch(case):
    rm = None if case["rm"] is None else case["rm"].copy()
    rv = None if case["rv"] is None else case["rv"].copy()
    m = case["x"].size // case["x"].shape[-1 if case["channels_last"] else 1]
    if case["training"] and m < 2:
        with pytest.raises(ValueError, match="more than 1 value"):
            bnorm.batch_norm(case["x"], rm, rv, case["weight"], case["bias"], True,
                             case["momentum"], case["eps"], channels_last=case["channels_last"],
                             num_batches_tracked=case["batches"])
        if rm is not None:
            assert np.array_equal(rm, case["rm"]) and np.array_equal(rv, case["rv"])
        return
    y = bnorm.batch_norm(case["x"], rm, rv, case["weight"], case["bias"], case["training"],
                         case["momentum"], case["eps"], channels_last=case["channels_last"],
                         num_batches_tracked=case["batches"])
    want_y, want_rm, want_rv = oracle(case)
    assert y.dtype == case["dtype"] and y.shape == case["x"].shape
    expect_close("y", to_ncx(y, case["channels_last"]), want_y,
                 bound(case, y_scale(case, want_rm, want_rv) + np.abs(want_y)))
    if rm is not None and case["training"]:
        x = to_ncx(case["x"], case["channels_last"]).astype(np.float64)
        axes = tuple(a for a in range(x.ndim) if a != 1)
        spread = np.abs(x).max(axis=axes)
        expect_close("running_mean", rm, want_rm,
                     bound(case, np.abs(case["rm"]) + spread + np.abs(want_rm)))
        expect_close("running_var", rv, want_rv,
                     bound(case, np.abs(case["rv"]) + (spread + np.abs(x.mean(axis=axes))) ** 2
                           * m / (m - 1) + np.abs(want_rv)))


@SETTINGS
@given(cases())
def test_torch_ops_match_torch(case):
    """bnorm.torch.batch_norm forward and its gradients against F.batch_norm (float64)."""
    m = case["x"].size // case["x"].shape[-1 if case["channels_last"] else 1]
    if case["training"] and m < 2:
        return  # the rejection is the NumPy test's and the error tests'
    x_nc = np.ascontiguousarray(to_ncx(case["x"], case["channels_last"]))
    x = torch.from_numpy(x_nc.copy()).requires_grad_(True)
    if case["channels_last"] and x.dim() == 4:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    w = None if case["weight"] is None else torch.from_numpy(case["weight"].copy()).requires_grad_(True)
    b = None if case["bias"] is None else torch.from_numpy(case["bias"].copy()).requires_grad_(True)
    rm = None if case["rm"] is None else torch.from_numpy(case["rm"].copy())
    rv = None if case["rv"] is None else torch.from_numpy(case["rv"].copy())
    momentum = case["momentum"]
    if momentum is None:
        momentum = 1.0 / case["batches"]
    y = bt.batch_norm(x, rm, rv, w, b, case["training"], momentum, case["eps"])
    dy = torch.from_numpy(np.random.default_rng(7).normal(size=x_nc.shape).astype(case["dtype"]))
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy)

    x64 = torch.from_numpy(x_nc.astype(np.float64)).requires_grad_(True)
    w64 = None if w is None else w.detach().double().requires_grad_(True)
    b64 = None if b is None else b.detach().double().requires_grad_(True)
    rm64 = t64(case["rm"])
    rv64 = t64(case["rv"])
    y64 = F.batch_norm(x64, rm64, rv64, w64, b64, case["training"], momentum, case["eps"])
    grads64 = torch.autograd.grad(y64, [t for t in (x64, w64, b64) if t is not None], dy.double())
    want_y = y64.detach().numpy()
    expect_close("y", y.detach().numpy(), want_y,
                 bound(case, y_scale(case, None, None) + np.abs(want_y)))
    # Gradients: scale by the sums of magnitudes they are built from.
    dyn = np.abs(dy.double().numpy())
    for name, got, want in zip(("dx", "dweight", "dbias"), grads, grads64):
        want = want.numpy()
        if name == "dx":
            scale = np.max(np.abs(want)) + np.max(y_scale(case, None, None)) * dyn.max() * 4
        else:
            scale = np.sum(dyn * (1 + y_scale(case, None, None)))
        expect_close(name, got.detach().numpy(), want, bound(case, scale))
    if rm is not None and case["training"]:
        expect_close("running_mean", rm.numpy(), rm64.numpy(), bound(case, 1e3 + np.abs(rm64.numpy())))


@st.composite
def bad_cases(draw):
    """One broken argument of an otherwise valid training call."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    c = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    args = dict(input=rng.normal(size=(3, c, 4)).astype(dtype),
                running_mean=rng.normal(size=c).astype(dtype),
                running_var=rng.uniform(0.5, 2, c).astype(dtype),
                weight=None, bias=None, training=True, momentum=0.1, eps=1e-5)
    broken = draw(st.sampled_from(["eps", "momentum", "running_mean_len", "weight_len",
                                   "m_is_1", "dtype_mix", "batches"]))
    if broken == "eps":
        args["eps"] = draw(st.sampled_from([0.0, -1e-5, math.inf, math.nan]))
    elif broken == "momentum":
        args["momentum"] = draw(st.sampled_from([-0.1, 1.5, math.nan]))
    elif broken == "running_mean_len":
        args["running_mean"] = np.zeros(c + draw(st.integers(1, 3)), dtype)
    elif broken == "weight_len":
        args["weight"] = np.ones(c + 1, dtype)
    elif broken == "m_is_1":
        args["input"] = args["input"][:1, :, :1].copy()
    elif broken == "dtype_mix":
        other = np.float64 if dtype == np.float32 else np.float32
        args["running_var"] = args["running_var"].astype(other)
    elif broken == "batches":
        args["momentum"] = None
        args["num_batches_tracked"] = draw(st.sampled_from([0, -3]))
    return broken, args


@settings(max_examples=80, deadline=None, derandomize=True)
@given(bad_cases())
def test_rejections_change_nothing(bad):
    broken, args = bad
    rm_before = args["running_mean"].copy()
    rv_before = args["running_var"].copy()
    with pytest.raises(ValueError) as err:
        bnorm.batch_norm(**args)
    assert str(err.value), broken
    assert np.array_equal(args["running_mean"], rm_before, equal_nan=True), broken
    assert np.array_equal(args["running_var"], rv_before, equal_nan=True), broken
