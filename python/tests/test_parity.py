"""bnorm against torch.nn.functional.batch_norm and autograd, over randomized cases.

Each case is one draw of rank, layout, dtype, momentum, mode, weight/bias,
sizes and data (fixed seed). Torch computes the forward output, the running
statistics and, through autograd, grad_input/grad_weight/grad_bias. bnorm
computes them three ways, each compared to torch:

- the NumPy API (batch_norm, batch_norm_train + batch_norm_backward, or
  batch_norm_backward_eval), in the tensor's storage order;
- bnorm.torch.batch_norm, the autograd.Function, on the same torch tensors;
- bnorm.torch.BatchNormXd against torch.nn.BatchNormXd when weight and bias
  are both present or both absent (the module's affine flag), in the mode's
  train()/eval() state.
"""

import itertools
import random
from dataclasses import dataclass

import bnorm
import bnorm.torch as bt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oracle import Scales, batch_moments, check

SEED = 20261121
REPEATS = 3

# mode: (module in training mode, running statistics tracked)
MODES = {"train": (True, True), "train_untracked": (True, False),
         "eval": (False, True), "eval_untracked": (False, False)}
MOMENTA = (0.1, 0.0, 1.0, None)
LAYOUTS = ((2, False), (3, False), (3, True), (4, False), (4, True), (5, False), (5, True))
DTYPES = (np.float32, np.float64)
TORCH_MODULES = {2: (bt.BatchNorm1d, torch.nn.BatchNorm1d), 3: (bt.BatchNorm1d, torch.nn.BatchNorm1d),
                 4: (bt.BatchNorm2d, torch.nn.BatchNorm2d), 5: (bt.BatchNorm3d, torch.nn.BatchNorm3d)}


@dataclass(frozen=True)
class Case:
    index: int
    dtype: type
    momentum: object
    mode: str
    ndim: int
    channels_last: bool
    seed: int

    def __str__(self):
        layout = "cl" if self.channels_last else "cf"
        return (f"{self.index}-{np.dtype(self.dtype).name}-{self.ndim}d{layout}-{self.mode}"
                f"-m{self.momentum}")


def make_cases():
    """Every dtype x momentum x mode x layout combination, REPEATS times."""
    rng = random.Random(SEED)
    grid = list(itertools.product(DTYPES, MOMENTA, MODES, LAYOUTS)) * REPEATS
    return [Case(i, dtype, momentum, mode, nd, cl, rng.randrange(2**31))
            for i, (dtype, momentum, mode, (nd, cl)) in enumerate(grid)]


CASES = make_cases()


def to_storage(a, channels_last):
    """(N, C, *spatial) -> the C-contiguous (N, *spatial, C) array bnorm reads."""
    if not channels_last:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def from_storage(a, channels_last):
    return np.moveaxis(a, -1, 1) if channels_last else a


def as_torch_input(a, channels_last):
    """A torch tensor of the logical shape whose memory is channels-last when asked."""
    t = torch.from_numpy(np.array(a))
    if not channels_last:
        return t
    perm = (0, *range(2, t.dim()), 1)
    inverse = (0, t.dim() - 1, *range(1, t.dim() - 1))
    stored = t.permute(perm).contiguous().permute(inverse)
    assert stored.permute(perm).is_contiguous()
    return stored


def draw(case):
    rng = np.random.default_rng(case.seed)
    training, tracked = MODES[case.mode]
    uses_batch_stats = training or not tracked
    n = int(rng.integers(1, 7))
    c = int(rng.integers(1, 6))
    spatial = tuple(int(s) for s in rng.integers(1, 6, size=case.ndim - 2))
    if uses_batch_stats and n * int(np.prod(spatial)) < 2:
        n = 2
    shape = (n, c) + spatial
    # Channels with an offset several times their spread, as real activations have.
    offset = rng.uniform(-5, 5, size=c) * rng.choice([0.0, 1.0])
    spread = rng.uniform(0.1, 10, size=c)
    x = (offset.reshape((1, c) + (1,) * len(spatial))
         + spread.reshape((1, c) + (1,) * len(spatial)) * rng.standard_normal(shape))
    weight = rng.uniform(0.5, 2, size=c) * rng.choice([-1, 1], size=c) if rng.random() < 0.75 else None
    bias = rng.normal(size=c) if rng.random() < 0.75 else None
    dt = case.dtype
    return dict(
        x=x.astype(dt), dy=rng.standard_normal(shape).astype(dt),
        weight=None if weight is None else weight.astype(dt),
        bias=None if bias is None else bias.astype(dt),
        running_mean=rng.normal(size=c).astype(dt) if tracked else None,
        running_var=rng.uniform(0.2, 3, size=c).astype(dt) if tracked else None,
        batches_before=int(rng.integers(0, 6)),
        eps=float(rng.choice([1e-5, 1e-3, 0.1])))


def tensor(a, requires_grad=False):
    return None if a is None else torch.from_numpy(np.array(a)).requires_grad_(requires_grad)


def copy(a):
    return None if a is None else np.array(a)


def torch_reference(case, d):
    """F.batch_norm as torch.nn.BatchNormXd calls it, with autograd."""
    training, tracked = MODES[case.mode]
    x = as_torch_input(d["x"], case.channels_last).requires_grad_(True)
    w, b = tensor(d["weight"], True), tensor(d["bias"], True)
    rm, rv = tensor(d["running_mean"]), tensor(d["running_var"])
    factor = 1.0 / (d["batches_before"] + 1) if case.momentum is None else case.momentum
    y = F.batch_norm(x, rm, rv, w, b, training=training or not tracked, momentum=factor,
                     eps=d["eps"])
    y.backward(torch.from_numpy(d["dy"]))
    grad = lambda t: None if t is None else t.grad.numpy()
    return dict(y=y.detach().numpy(), running_mean=None if rm is None else rm.numpy(),
                running_var=None if rv is None else rv.numpy(), dx=x.grad.numpy(),
                dweight=grad(w), dbias=grad(b))


def bnorm_numpy(case, d):
    """The NumPy API in the tensor's storage order."""
    training, tracked = MODES[case.mode]
    cl = case.channels_last
    x, dy = to_storage(d["x"], cl), to_storage(d["dy"], cl)
    w, b = d["weight"], d["bias"]
    rm, rv = copy(d["running_mean"]), copy(d["running_var"])
    batches = d["batches_before"] + 1
    if training or not tracked:
        y = bnorm.batch_norm(x, rm, rv, w, b, True, case.momentum, d["eps"], cl,
                             num_batches_tracked=batches)
        rm2, rv2 = copy(d["running_mean"]), copy(d["running_var"])
        y2, mean, invstd = bnorm.batch_norm_train(x, w, b, rm2, rv2, case.momentum, d["eps"], cl,
                                                  num_batches_tracked=batches)
        # One kernel behind both entry points: identical to the bit.
        np.testing.assert_array_equal(y, y2)
        if tracked:
            np.testing.assert_array_equal(rm, rm2)
            np.testing.assert_array_equal(rv, rv2)
        grads = bnorm.batch_norm_backward(dy, x, w if w is not None else (
            np.ones_like(mean) if b is not None else None), mean, invstd, cl)
    else:
        y = bnorm.batch_norm(x, rm, rv, w, b, False, case.momentum, d["eps"], cl)
        grads = bnorm.batch_norm_backward_eval(dy, x, w if w is not None else (
            np.ones_like(rm) if b is not None else None), rm, rv, d["eps"], cl)
    dx, dw, db = grads
    assert (dw is None) == (w is None and b is None)
    return dict(y=from_storage(y, cl), running_mean=rm, running_var=rv,
                dx=from_storage(dx, cl), dweight=dw if w is not None else None,
                dbias=db if b is not None else None)


def bnorm_function(case, d):
    """bnorm.torch.batch_norm (the autograd.Function) on torch tensors."""
    training, tracked = MODES[case.mode]
    x = as_torch_input(d["x"], case.channels_last).requires_grad_(True)
    w, b = tensor(d["weight"], True), tensor(d["bias"], True)
    rm, rv = tensor(d["running_mean"]), tensor(d["running_var"])
    y = bt.batch_norm(x, rm, rv, w, b, training=training or not tracked, momentum=case.momentum,
                      eps=d["eps"], num_batches_tracked=d["batches_before"] + 1)
    if case.channels_last and x.dim() >= 4:
        memory = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert y.is_contiguous(memory_format=memory)
    y.backward(torch.from_numpy(d["dy"]))
    grad = lambda t: None if t is None else t.grad.numpy()
    return dict(y=y.detach().numpy(), running_mean=None if rm is None else rm.numpy(),
                running_var=None if rv is None else rv.numpy(), dx=x.grad.numpy(),
                dweight=grad(w), dbias=grad(b))


def modules(case, d):
    """bnorm.torch.BatchNormXd and torch.nn.BatchNormXd, each run on the case."""
    training, tracked = MODES[case.mode]
    c = d["x"].shape[1]
    affine = d["weight"] is not None
    results = []
    for cls in TORCH_MODULES[case.ndim]:
        m = cls(c, eps=d["eps"], momentum=case.momentum, affine=affine,
                track_running_stats=tracked, dtype=torch.float64 if case.dtype == np.float64
                else torch.float32)
        with torch.no_grad():
            if affine:
                m.weight.copy_(torch.from_numpy(d["weight"]))
                m.bias.copy_(torch.from_numpy(d["bias"]))
            if tracked:
                m.running_mean.copy_(torch.from_numpy(d["running_mean"]))
                m.running_var.copy_(torch.from_numpy(d["running_var"]))
                m.num_batches_tracked.fill_(d["batches_before"])
        m.train(training)
        x = as_torch_input(d["x"], case.channels_last).requires_grad_(True)
        y = m(x)
        y.backward(torch.from_numpy(d["dy"]))
        results.append(dict(
            y=y.detach().numpy(), dx=x.grad.numpy(),
            dweight=m.weight.grad.numpy() if affine else None,
            dbias=m.bias.grad.numpy() if affine else None,
            running_mean=m.running_mean.numpy() if tracked else None,
            running_var=m.running_var.numpy() if tracked else None,
            num_batches_tracked=int(m.num_batches_tracked) if tracked else None))
    return results


def compare(case, d, got, ref, label):
    training, tracked = MODES[case.mode]
    dt = case.dtype
    batch_mean, batch_var, batch_var_unbiased = batch_moments(d["x"])
    if training or not tracked:
        mean, invstd = batch_mean, 1 / np.sqrt(batch_var + d["eps"])
    else:
        mean = d["running_mean"].astype(np.float64)
        invstd = 1 / np.sqrt(d["running_var"].astype(np.float64) + d["eps"])
    s = Scales(d["x"], d["dy"], d["weight"], d["bias"], mean, invstd)
    check("forward y", dt, got["y"], ref["y"], s.y)
    dx_scale = s.dx_batch if (training or not tracked) else s.dx_frozen
    check("grad_input", dt, got["dx"], ref["dx"], dx_scale)
    for name, scale in (("dweight", s.dweight), ("dbias", s.dbias)):
        assert (got[name] is None) == (ref[name] is None), f"{label}: {name} presence"
        if ref[name] is not None:
            check("grad_weight" if name == "dweight" else "grad_bias", dt, got[name], ref[name],
                  scale)
    assert (got["running_mean"] is None) == (ref["running_mean"] is None)
    if ref["running_mean"] is None:
        return
    if training:
        rm0 = np.abs(d["running_mean"].astype(np.float64))
        rv0 = np.abs(d["running_var"].astype(np.float64))
        check("running_mean", dt, got["running_mean"], ref["running_mean"],
              float(np.max(rm0 + np.abs(batch_mean))))
        check("running_var", dt, got["running_var"], ref["running_var"],
              float(np.max(rv0 + batch_var_unbiased)))
    else:  # eval reads the running statistics and leaves them alone
        np.testing.assert_array_equal(got["running_mean"], d["running_mean"])
        np.testing.assert_array_equal(got["running_var"], d["running_var"])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_parity(case):
    d = draw(case)
    ref = torch_reference(case, d)
    compare(case, d, bnorm_numpy(case, d), ref, "numpy API")
    compare(case, d, bnorm_function(case, d), ref, "autograd.Function")
    if (d["weight"] is None) == (d["bias"] is None):
        ours, theirs = modules(case, d)
        compare(case, d, ours, theirs, "module")
        assert ours["num_batches_tracked"] == theirs["num_batches_tracked"]


def test_case_count_and_coverage():
    assert len(CASES) >= 500
    seen = {(np.dtype(c.dtype).name, c.momentum, c.mode, c.ndim, c.channels_last) for c in CASES}
    assert len(seen) == len(DTYPES) * len(MOMENTA) * len(MODES) * len(LAYOUTS)
