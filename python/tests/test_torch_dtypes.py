"""bnorm.torch with bfloat16 and float16 activations, against torch in float64.

The input is drawn in float64 and rounded to the 16-bit type; the oracle is
torch.nn.BatchNorm2d in float64 on those same values. Bounds follow the
types: y and dx within a few roundings of T (u = 2^-8 for bfloat16, 2^-11
for float16) plus float32 accumulation; the statistics, the running
statistics and the parameter gradients (float32 parameters) at float32's
accuracy. With parameters converted to the 16-bit type, as model.half()
does, the running statistics and gradients are rounded to it once more.
"""

import pytest
import torch

import bnorm.torch as bt

UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
FLOAT32_U = 2.0 ** -24


def run(module, x, dy):
    x = x.detach().requires_grad_()
    y = module(x)
    y.backward(dy)
    return y, x.grad, module


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
@pytest.mark.parametrize("param_dtype", ["float32", "same"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_16_bit_activations_against_float64(dtype, param_dtype, memory_format):
    torch.manual_seed(0)
    u = UNIT_ROUNDOFF[dtype]
    p_dtype = torch.float32 if param_dtype == "float32" else dtype
    x = (torch.randn(16, 8, 7, 6, dtype=torch.float64) * 3 + 2).to(dtype)
    x = x.to(memory_format=memory_format)
    dy = torch.randn(16, 8, 7, 6).to(dtype).to(memory_format=memory_format)
    ours = bt.BatchNorm2d(8)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    ours = ours.to(p_dtype)
    reference = torch.nn.BatchNorm2d(8).double()
    reference.load_state_dict(ours.state_dict())  # the same (rounded) parameters
    y, dx, ours = run(ours, x, dy)
    y_ref, dx_ref, reference = run(reference, x.double(), dy.double())

    assert y.dtype == dx.dtype == dtype
    assert y.stride() == x.stride() and dx.stride() == x.stride()
    assert ours.running_mean.dtype == ours.weight.grad.dtype == p_dtype
    # y: one rounding of T of the exact value, plus float32 arithmetic before it.
    err = (y.double() - y_ref).abs()
    assert (err <= 2 * u * y_ref.abs() + 64 * FLOAT32_U * y_ref.abs().max()).all(), err.max()
    # dx: cancels within each channel, so measured against its scale.
    scale = (ours.weight.detach().double().abs().max() * dy.double().abs().max()
             / reference.running_var.sqrt().min())
    assert (dx.double() - dx_ref).abs().max() <= 4 * u * scale
    p_u = FLOAT32_U if p_dtype == torch.float32 else UNIT_ROUNDOFF[dtype]
    for got, want in ((ours.running_mean, reference.running_mean),
                      (ours.running_var, reference.running_var),
                      (ours.weight.grad, reference.weight.grad),
                      (ours.bias.grad, reference.bias.grad)):
        got = got.double()
        assert ((got - want).abs() <= 64 * p_u * want.abs().max()).all(), (got - want).abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_16_bit_eval_and_functional(dtype):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 5).to(dtype)
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    y = bt.batch_norm(x, rm, rv, w, b, training=False)
    want = torch.nn.functional.batch_norm(x.double(), rm.double(), rv.double(), w.double(),
                                          b.double(), training=False)
    u = UNIT_ROUNDOFF[dtype]
    assert y.dtype == dtype
    assert ((y.double() - want).abs() <= 2 * u * want.abs() + 1e-6).all()


def test_16_bit_gradcheck_in_float64_matches_the_op_path():
    """The 16-bit path runs the same autograd nodes; its double backward
    returns each gradient in its input's dtype."""
    x = torch.randn(4, 3, 5, dtype=torch.bfloat16, requires_grad=True)
    w = torch.rand(3, requires_grad=True)
    y = bt.batch_norm(x, None, None, w, None, training=True)
    gx, gw = torch.autograd.grad(y, (x, w), torch.randn_like(y), create_graph=True)
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.float32
    (gx.float().square().sum() + gw.square().sum()).backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_channels_near_the_largest_value_give_finite_statistics(dtype, memory_format):
    # Channel 0 spans +-3e38: float32 sums and squares of it overflow (torch
    # 1.13's own kernel returns y = 0 there); double holds them. Channel 1
    # has ordinary values in the same work units.
    g = torch.Generator().manual_seed(3)
    x64 = torch.randn(8, 2, 5, 5, generator=g, dtype=torch.float64)
    x64[:, 0] = torch.sign(x64[:, 0]) * 1e38 * (1 + x64[:, 0].abs().clamp(max=2))
    x = x64.to(dtype).contiguous(memory_format=memory_format)
    x64 = x.double()
    bn = bt.BatchNorm2d(2).train()
    y = bn(x)
    ref = torch.nn.BatchNorm2d(2).double().train()
    want = ref(x64)
    assert torch.isfinite(y).all()
    u = UNIT_ROUNDOFF.get(dtype, FLOAT32_U)
    # One rounding of T plus float32's computation, relative to |y| <= 2
    # (the huge channel's invstd, ~5e-39, is subnormal in float32: a few
    # units of float32's roundoff more).
    assert (y.double() - want).abs().max() <= u * want.abs().max() + 64 * FLOAT32_U
    # The mean's error is relative to the channel's spread: the values'
    # rounding, summed, cancels to a mean 1e-5 of their size.
    spread = x64.abs().amax(dim=(0, 2, 3))
    assert ((bn.running_mean.double() - ref.running_mean).abs()
            <= 16 * FLOAT32_U * 0.1 * spread).all()
    # The huge channel's running variance (about 1e76) is past float32: +inf.
    assert bn.running_var[0] == float("inf")
    torch.testing.assert_close(bn.running_var[1].double(), ref.running_var[1],
                               rtol=16 * FLOAT32_U, atol=0)
