"""Bad input raises ValueError naming the argument, and changes nothing."""

import bnorm
import bnorm.torch as bt
import numpy as np
import pytest
import torch

C = 3


def good(dtype=np.float32):
    r = np.random.default_rng(3)
    return dict(x=r.standard_normal((4, C, 5)).astype(dtype),
                rm=r.normal(size=C).astype(dtype), rv=r.uniform(0.5, 2, C).astype(dtype),
                w=np.ones(C, dtype), b=np.zeros(C, dtype))


def train(a, **kw):
    args = dict(input=a["x"], running_mean=a["rm"], running_var=a["rv"], weight=a["w"],
                bias=a["b"], training=True)
    args.update(kw)
    return bnorm.batch_norm(**args)


def train_saving(a, **kw):
    args = dict(input=a["x"], weight=a["w"], bias=a["b"], running_mean=a["rm"],
                running_var=a["rv"])
    args.update(kw)
    return bnorm.batch_norm_train(**args)


def infer(a, **kw):
    args = dict(input=a["x"], running_mean=a["rm"], running_var=a["rv"], weight=a["w"],
                bias=a["b"], training=False)
    args.update(kw)
    return bnorm.batch_norm(**args)


def read_only(v):
    v = np.array(v)
    v.flags.writeable = False
    return v


# (id, call, pattern the message must match). Messages starting with bnorm::
# come from the C++ core's checks, bnorm. from the binding's.
FORWARD_CASES = [
    ("eps zero", lambda a: train(a, eps=0.0), r"^bnorm::forward_training: eps must be finite and > 0, got 0"),
    ("eps negative", lambda a: train(a, eps=-1e-5), r"^bnorm::forward_training: eps .* got -0\.00001"),
    ("eps nan", lambda a: train(a, eps=float("nan")), r"^bnorm::forward_training: eps .* got nan"),
    ("eps inf", lambda a: train_saving(a, eps=float("inf")), r"^bnorm::forward_training: eps .* got inf"),
    ("eval eps zero", lambda a: infer(a, eps=0.0), r"^bnorm::forward_inference: eps .* got 0"),
    ("momentum negative", lambda a: train(a, momentum=-0.1), r"^bnorm::forward_training: momentum must be in \[0, 1\], got -0\.1"),
    ("momentum above one", lambda a: train_saving(a, momentum=1.5), r"momentum must be in \[0, 1\], got 1\.5"),
    ("momentum nan", lambda a: train(a, momentum=float("nan")), r"momentum must be in \[0, 1\], got nan"),
    ("one value per channel", lambda a: train(a, input=a["x"][:1, :, :1]), r"^bnorm::forward_training: expected more than 1 value per channel in training, got n\*s = 1"),
    ("one value per channel 2-D", lambda a: train_saving(a, input=a["x"][:1, :, 0]), r"more than 1 value per channel"),
    ("running_var missing", lambda a: train(a, running_var=None), r"^bnorm::forward_training: running_mean and running_var must both be given"),
    ("running_mean missing", lambda a: train_saving(a, running_mean=None), r"running_mean and running_var must both be given or both null, got running_mean null"),
    ("momentum None without count", lambda a: train(a, momentum=None), r"^bnorm::forward_training: momentum is nullopt .* num_batches_tracked is 0, expected >= 1"),
    ("momentum None without count (train)", lambda a: train_saving(a, momentum=None), r"^bnorm::forward_training: momentum is nullopt .* num_batches_tracked is 0"),
    ("momentum None count zero", lambda a: train(a, momentum=None, num_batches_tracked=0), r"^bnorm::forward_training: momentum is nullopt .* num_batches_tracked is 0, expected >= 1"),
    ("momentum None count negative", lambda a: train(a, momentum=None, num_batches_tracked=-2), r"num_batches_tracked is -2"),
    ("empty batch", lambda a: train(a, input=a["x"][:0]), r"^bnorm::forward_training: shape\.n must be >= 1, got 0"),
    ("empty spatial", lambda a: train(a, input=a["x"][:, :, :0]), r"shape\.s must be >= 1, got 0"),
    ("eval empty batch", lambda a: infer(a, input=a["x"][:0]), r"^bnorm::forward_inference: shape\.n must be >= 1, got 0"),
    ("no channels", lambda a: train(a, input=a["x"][:, :0], running_mean=None, running_var=None, weight=None, bias=None), r"shape\.c must be >= 1, got 0"),
    ("input None", lambda a: train(a, input=None), r"^bnorm\.batch_norm: input must be an array, got None"),
    ("input int", lambda a: train(a, input=a["x"].astype(np.int64)), r"input must have dtype float16, float32 or float64, got int64"),
    ("input float128", lambda a: train(a, input=a["x"].astype(np.longdouble)), r"input must have dtype float16, float32 or float64, got float128"),
    ("float16 input, float64 weight", lambda a: train(a, input=a["x"].astype(np.float16), weight=a["w"].astype(np.float64)), r"weight must have dtype float32 \(per-channel arrays of float16 input are float32\), got float64"),
    ("input 1-D", lambda a: train(a, input=a["x"][0, 0]), r"input must have at least 2 dimensions \(N, C, \*spatial\), got shape \(5,\)"),
    ("input 0-D", lambda a: infer(a, input=np.float32(1)), r"input must have at least 2 dimensions .* got shape \(\)"),
    ("running_mean length", lambda a: train(a, running_mean=np.zeros(C + 1, np.float32)), r"running_mean must have shape \(3,\) \(one value per channel\), got \(4,\)"),
    ("running_var dtype", lambda a: train(a, running_var=a["rv"].astype(np.float64)), r"running_var must have dtype float32 like input, got float64"),
    ("running_mean 2-D", lambda a: train(a, running_mean=a["rm"].reshape(1, C)), r"running_mean must have shape \(3,\) .* got \(1, 3\)"),
    ("running_var strided", lambda a: train(a, running_var=np.ones(2 * C, np.float32)[::2]), r"running_var must be contiguous and aligned \(it is updated in place\), got strides \(8,\)"),
    ("running_mean read-only", lambda a: train(a, running_mean=read_only(a["rm"])), r"running_mean must be writeable"),
    ("running_mean list", lambda a: train(a, running_mean=list(a["rm"])), r"running_mean must be a NumPy array \(it is updated in place\), got <class 'list'>"),
    ("weight length", lambda a: train(a, weight=np.ones(2, np.float32)), r"weight must have shape \(3,\) .* got \(2,\)"),
    ("bias dtype", lambda a: train_saving(a, bias=np.zeros(C)), r"^bnorm\.batch_norm_train: bias must have dtype float32 like input, got float64"),
    ("eval without running stats", lambda a: infer(a, running_mean=None, running_var=None), r"^bnorm\.batch_norm: training=False normalizes with running_mean and running_var, got running_mean=None"),
    ("eval without running_var", lambda a: infer(a, running_var=None), r"got running_var=None"),
    ("eval running_var length", lambda a: infer(a, running_var=np.ones(5, np.float32)), r"running_var must have shape \(3,\)"),
    ("channels_last puts C last", lambda a: train(a, channels_last=True), r"weight must have shape \(5,\) .* got \(3,\)"),
    ("channels_last input 1-D", lambda a: train(a, input=a["x"][0, 0], channels_last=True), r"at least 2 dimensions \(N, \*spatial, C\)"),
]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_bad_forward_input_raises_and_changes_nothing(case):
    _, call, pattern = case
    a = good()
    rm, rv = a["rm"].copy(), a["rv"].copy()
    with pytest.raises(ValueError, match=pattern):
        call(a)
    np.testing.assert_array_equal(a["rm"], rm)
    np.testing.assert_array_equal(a["rv"], rv)


def saved(a):
    _, mean, invstd = bnorm.batch_norm_train(a["x"])
    return dict(dy=np.ones_like(a["x"]), mean=mean, invstd=invstd, **a)


def backward(a, **kw):
    args = dict(grad_output=a["dy"], input=a["x"], weight=a["w"], save_mean=a["mean"],
                save_invstd=a["invstd"])
    args.update(kw)
    return bnorm.batch_norm_backward(**args)


def backward_eval(a, **kw):
    args = dict(grad_output=a["dy"], input=a["x"], weight=a["w"], running_mean=a["rm"],
                running_var=a["rv"])
    args.update(kw)
    return bnorm.batch_norm_backward_eval(**args)


BACKWARD_CASES = [
    ("grad_output shape", lambda a: backward(a, grad_output=a["dy"][:, :, :4]), r"^bnorm\.batch_norm_backward: grad_output must have the shape of input \(4, 3, 5\), got \(4, 3, 4\)"),
    ("grad_output dtype", lambda a: backward(a, grad_output=a["dy"].astype(np.float64)), r"grad_output must have dtype float32 like input, got float64"),
    ("grad_output int", lambda a: backward(a, grad_output=a["dy"].astype(np.int32)), r"grad_output must have dtype float16, float32 or float64, got int32"),
    ("save_mean length", lambda a: backward(a, save_mean=a["mean"][:2]), r"save_mean must have shape \(3,\) .* got \(2,\)"),
    ("save_invstd None", lambda a: backward(a, save_invstd=None), r"save_invstd must be an array, got None"),
    ("save_mean None", lambda a: backward(a, save_mean=None), r"save_mean must be an array, got None"),
    ("weight dtype", lambda a: backward(a, weight=np.ones(C)), r"weight must have dtype float32"),
    ("empty batch", lambda a: backward(a, grad_output=a["dy"][:0], input=a["x"][:0]), r"^bnorm::backward: shape\.n must be >= 1, got 0"),
    ("eval eps zero", lambda a: backward_eval(a, eps=0.0), r"^bnorm::backward_inference: eps must be finite and > 0, got 0"),
    ("eval eps nan", lambda a: backward_eval(a, eps=float("nan")), r"eps must be finite and > 0, got nan"),
    ("eval running_var None", lambda a: backward_eval(a, running_var=None), r"running_var must be an array, got None"),
    ("eval empty batch", lambda a: backward_eval(a, grad_output=a["dy"][:0], input=a["x"][:0]), r"^bnorm::backward_inference: shape\.n must be >= 1"),
]


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=[c[0] for c in BACKWARD_CASES])
def test_bad_backward_input_raises(case):
    _, call, pattern = case
    with pytest.raises(ValueError, match=pattern):
        call(saved(good()))


def trained_module(cls=bt.BatchNorm2d, **kw):
    m = cls(C, **kw)
    m(torch.randn(4, C, 3, 3) if cls is bt.BatchNorm2d else torch.randn(4, C))
    return m


MODULE_CASES = [
    ("wrong rank", dict(), lambda m: m(torch.randn(4, C, 5)), r"expected 4D input \(got 3D input\)"),
    ("wrong rank 1d", dict(cls=bt.BatchNorm1d), lambda m: m(torch.randn(4, C, 5, 5)), r"expected 2D or 3D input \(got 4D input\)"),
    ("wrong channel count", dict(), lambda m: m(torch.randn(4, C + 1, 3, 3)), r"weight must have 4 elements \(one per channel of input of sizes \[4, 4, 3, 3\]\), got sizes \[3\]"),
    ("one value per channel", dict(), lambda m: m(torch.randn(1, C, 1, 1)), r"^Expected more than 1 value per channel when training, got input size \[1, 3, 1, 1\]"),
    ("complex", dict(), lambda m: m(torch.randn(4, C, 3, 3, dtype=torch.complex64)), r"input must be float32, float64, bfloat16 or float16, got ComplexFloat"),
    ("bfloat16 weight for float16 input", dict(), lambda m: bt.batch_norm(torch.randn(4, C, 3, 3).half(), m.running_mean, m.running_var, m.weight.detach().bfloat16(), training=True), r"weight must have input's dtype Half or float32, got BFloat16"),
    ("int input", dict(), lambda m: m(torch.ones(4, C, 3, 3, dtype=torch.int32)), r"input must be float32, float64, bfloat16 or float16"),
    ("float64 into float32 module", dict(), lambda m: m(torch.randn(4, C, 3, 3, dtype=torch.float64)), r"weight must have input's dtype Double, got Float"),
    ("momentum out of range", dict(momentum=2.0), lambda m: m(torch.randn(4, C, 3, 3)), r"momentum must be in \[0, 1\], got 2"),
    ("eps zero", dict(eps=0.0), lambda m: m(torch.randn(4, C, 3, 3)), r"eps must be finite and > 0, got 0"),
    ("eval eps zero", dict(eps=0.0), lambda m: m.eval()(torch.randn(4, C, 3, 3)), r"^bnorm::forward_inference: eps"),
    ("functional momentum None", dict(), lambda m: bt.batch_norm(torch.randn(4, C, 3, 3), m.running_mean, m.running_var, training=True, momentum=None), r"num_batches_tracked"),
]


@pytest.mark.parametrize("case", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_bad_module_input_raises_and_changes_nothing(case):
    _, kw, call, pattern = case
    torch.manual_seed(0)
    kw = dict(kw)
    cls = kw.pop("cls", bt.BatchNorm2d)
    # Built with good settings, then given the bad ones, so the stats are not trivial.
    m = trained_module(cls)
    for key, value in kw.items():
        setattr(m, key, value)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=pattern):
        call(m)
    after = m.state_dict()
    assert int(after["num_batches_tracked"]) == 1
    for k, v in before.items():
        assert torch.equal(after[k], v), k
