"""bnorm.torch's BatchRenorm and GhostBatchNorm modules against the NumPy API
(bnorm.batch_renorm_train / batch_norm_train(virtual_batch_size=...), whose
kernels test_stats.py checks against PyTorch autograd on Algorithm 1), and
against bnorm.torch.BatchNorm2d where they must reduce to it."""

import numpy as np
import pytest
import torch

import bnorm
import bnorm.torch as bt
import oracle


def _tensor(shape, dtype, seed, loc=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (loc + scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


NP = {torch.float32: np.float32, torch.float64: np.float64}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clipped", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_renorm2d_against_numpy_api(dtype, clipped, channels_last):
    torch.manual_seed(0)
    x = _tensor((6, 3, 4, 5), dtype, 1, 0.5, 2.0)
    dy = _tensor(x.shape, dtype, 2)
    m = bt.BatchRenorm2d(3, momentum=0.05, rmax=3.0, dmax=5.0).to(dtype)
    with torch.no_grad():
        m.weight.copy_(_tensor((3,), dtype, 3, 1.0, 0.3))
        m.bias.copy_(_tensor((3,), dtype, 4))
        var, mean = torch.var_mean(x, dim=[0, 2, 3], unbiased=False)
        m.running_var.copy_(var * (100 if clipped else 1.3))
        m.running_mean.copy_(mean + (80 if clipped else 0.2) * var.sqrt())
    rm0, rv0 = m.running_mean.numpy().copy(), m.running_var.numpy().copy()
    xin = x.to(memory_format=torch.channels_last) if channels_last else x
    xin = xin.clone().requires_grad_(True)
    y = m(xin)
    y.backward(dy)
    # The NumPy API on the same data (NCHW).
    rm, rv = rm0.copy(), rv0.copy()
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    yn, mean_n, invstd_n, r, d = bnorm.batch_renorm_train(
        x.numpy(), rm, rv, w, b, rmax=3.0, dmax=5.0, momentum=0.05)
    if clipped:
        assert np.all((r == 3) | (np.isclose(r, 1 / 3))) and np.all(np.abs(d) == 5)
    dx, dw, db = bnorm.batch_renorm_backward(dy.numpy(), x.numpy(), w, mean_n, invstd_n, r, d)
    npd = NP[dtype]
    scales = oracle.Scales(x.numpy(), dy.numpy(), w * r, b + 5 * np.abs(w), mean_n, invstd_n)
    oracle.check("BatchRenorm2d y", npd, y.detach().numpy(), yn, scales.y, tolerance=16)
    oracle.check("BatchRenorm2d running_mean", npd, m.running_mean.numpy(), rm,
                 float(np.abs(rm).max()))
    oracle.check("BatchRenorm2d running_var", npd, m.running_var.numpy(), rv, float(rv.max()))
    oracle.check("BatchRenorm2d r", npd, m.last_r.numpy(), r, float(r.max()))
    oracle.check("BatchRenorm2d grad_input", npd, xin.grad.numpy(), dx, scales.dx_batch,
                 tolerance=16)
    oracle.check("BatchRenorm2d grad_weight", npd, m.weight.grad.numpy(), dw,
                 3 * scales.dweight + 5 * scales.dbias, tolerance=16)
    oracle.check("BatchRenorm2d grad_bias", npd, m.bias.grad.numpy(), db, scales.dbias)
    assert int(m.num_batches_tracked) == 1
    # Eval: batch norm with the running statistics.
    m.eval()
    ye = m(x)
    want = bnorm.batch_norm(x.numpy(), m.running_mean.numpy(), m.running_var.numpy(), w, b)
    assert torch.equal(ye, torch.from_numpy(want))


@pytest.mark.parametrize("affine", [True, False])
def test_batch_renorm_rmax1_dmax0_is_batch_norm(affine):
    x = _tensor((8, 4, 3, 3), torch.float32, 5, -1.0, 3.0)
    dy = _tensor(x.shape, torch.float32, 6)
    br = bt.BatchRenorm2d(4, momentum=0.1, affine=affine, rmax=1.0, dmax=0.0)
    bn = bt.BatchNorm2d(4, momentum=0.1, affine=affine)
    for mod in (br, bn):
        mod.running_mean.fill_(2.0)
        mod.running_var.fill_(7.0)
        if affine:
            with torch.no_grad():
                mod.weight.copy_(torch.linspace(0.5, 2.0, 4))
                mod.bias.copy_(torch.linspace(-1.0, 1.0, 4))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = br(xa), bn(xb)
    ya.backward(dy)
    yb.backward(dy)
    assert torch.equal(ya, yb)
    assert torch.equal(br.running_mean, bn.running_mean)
    assert torch.equal(br.running_var, bn.running_var)
    assert torch.equal(xa.grad, xb.grad)
    if affine:
        assert torch.equal(br.weight.grad, bn.weight.grad)
        assert torch.equal(br.bias.grad, bn.bias.grad)


@pytest.mark.parametrize("cls, shape", [(bt.BatchRenorm1d, (8, 3)), (bt.BatchRenorm1d, (4, 3, 5)),
                                        (bt.BatchRenorm3d, (3, 3, 2, 2, 2))])
def test_batch_renorm_other_ranks(cls, shape):
    x = _tensor(shape, torch.float64, 7, 0.3, 1.5)
    m = cls(3).double()
    y = m(x)
    rm, rv = np.zeros(3), np.ones(3)
    want = bnorm.batch_renorm_train(x.numpy(), rm, rv, np.ones(3), np.zeros(3), momentum=0.01)[0]
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="expected"):
        m(torch.zeros((2,) * (len(shape) + 2), dtype=torch.float64))


def test_batch_renorm_bad_limits_change_nothing():
    m = bt.BatchRenorm2d(3, rmax=0.5)
    x = _tensor((4, 3, 2, 2), torch.float32, 8)
    with pytest.raises(ValueError, match="rmax must be finite and >= 1, got 0.5"):
        m(x)
    m.rmax, m.dmax = 3.0, -1.0
    with pytest.raises(ValueError, match="dmax must be finite and >= 0, got -1"):
        m(x)
    assert torch.equal(m.running_mean, torch.zeros(3)) and torch.equal(m.running_var, torch.ones(3))
    assert int(m.num_batches_tracked) == 0


def test_renorm_schedule_marks():
    assert bt.renorm_schedule(0) == (1.0, 0.0)
    assert bt.renorm_schedule(5000) == (1.0, 0.0)
    assert bt.renorm_schedule(15000)[1] == pytest.approx(2.5)
    assert bt.renorm_schedule(22500)[0] == pytest.approx(2.0)
    assert bt.renorm_schedule(40000) == (3.0, 5.0)
    assert bt.renorm_schedule(250, hold=50, dmax_at=250, rmax_at=400) == (pytest.approx(15 / 7), 5.0)  # 1 + 2 * 200/350


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, vbs", [(12, 4), (7, 3), (5, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ghost_batch_norm2d_against_numpy_api(dtype, n, vbs, channels_last):
    x = _tensor((n, 3, 2, 3), dtype, 10 + n, 0.4, 1.3)
    dy = _tensor(x.shape, dtype, 11 + n)
    m = bt.GhostBatchNorm2d(3, vbs, momentum=0.2).to(dtype)
    with torch.no_grad():
        m.weight.copy_(_tensor((3,), dtype, 12, 1.0, 0.4))
        m.bias.copy_(_tensor((3,), dtype, 13))
    xin = x.to(memory_format=torch.channels_last) if channels_last else x
    xin = xin.clone().requires_grad_(True)
    y = m(xin)
    y.backward(dy)
    npd = NP[dtype]
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    rm, rv = np.zeros(3, npd), np.ones(3, npd)
    yn, mean, invstd = bnorm.batch_norm_train(x.numpy(), w, b, rm, rv, momentum=0.2,
                                              virtual_batch_size=vbs)
    dx, dw, db = bnorm.batch_norm_backward(dy.numpy(), x.numpy(), w, mean, invstd,
                                           virtual_batch_size=vbs)
    eps = np.finfo(npd).eps
    np.testing.assert_allclose(y.detach().numpy(), yn, rtol=0,
                               atol=16 * eps * (np.abs(yn).max() + 1))
    np.testing.assert_allclose(m.running_mean.numpy(), rm, rtol=0, atol=16 * eps)
    np.testing.assert_allclose(m.running_var.numpy(), rv, rtol=0, atol=16 * eps * rv.max())
    np.testing.assert_allclose(xin.grad.numpy(), dx, rtol=0,
                               atol=64 * eps * (np.abs(dx).max() + np.abs(dy.numpy()).max()))
    np.testing.assert_allclose(m.weight.grad.numpy(), dw, rtol=0,
                               atol=64 * eps * np.abs(dy.numpy()).sum())
    np.testing.assert_allclose(m.bias.grad.numpy(), db, rtol=0,
                               atol=64 * eps * np.abs(dy.numpy()).sum())
    assert int(m.num_batches_tracked) == -(-n // vbs)


def test_ghost_errors_change_nothing():
    with pytest.raises(ValueError, match="virtual_batch_size must be >= 2, got 1"):
        bt.GhostBatchNorm1d(3, 1)
    m = bt.GhostBatchNorm1d(3, 3)
    with pytest.raises(ValueError, match="the last group holds 1 sample"):
        m(_tensor((7, 3), torch.float32, 14))
    assert torch.equal(m.running_mean, torch.zeros(3)) and int(m.num_batches_tracked) == 0
    m3 = bt.GhostBatchNorm3d(2, 2)
    y = m3(_tensor((4, 2, 2, 2, 2), torch.float32, 15))
    assert y.shape == (4, 2, 2, 2, 2) and int(m3.num_batches_tracked) == 2
