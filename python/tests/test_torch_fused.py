"""bnorm.torch's fused batch norm (BatchNormActXd, fuse, fold) against torch's
own unfused composition (batch_norm, add, relu/leaky_relu) in float64, torch's
gradcheck, and the float64-referenced ResNet-18 step of test_torch_models."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
import torchvision

import bnorm.torch as bt
import oracle
from test_torch_models import (ALLOWED_RATIO, FLOOR, Branches, category, category_norm,
                               relative_error, run_step)

ACTS = [("identity", 0.0), ("relu", 0.0), ("leaky_relu", 0.1)]
MODULES = {1: bt.BatchNormAct1d, 2: bt.BatchNormAct2d, 3: bt.BatchNormAct3d}


def composition(x, residual, bn, act, slope, abs_weight=False):
    """torch's unfused sequence on a copy of bn's state (float64)."""
    w = bn.weight
    if abs_weight:
        w = w.abs() + 1e-5
    z = F.batch_norm(x, bn.running_mean, bn.running_var, w, bn.bias, bn.training, bn.momentum,
                     bn.eps)
    if residual is not None:
        z = z + residual
    if act == "relu":
        return torch.relu(z)
    if act == "leaky_relu":
        return F.leaky_relu(z, slope)
    return z


def make_input(dims, channels_last, seed):
    torch.manual_seed(seed)
    sizes = {1: (6, 5, 7), 2: (4, 5, 6, 7), 3: (3, 5, 4, 3, 5)}[dims]
    x = torch.randn(*sizes, dtype=torch.double) * 2 + 0.5
    if channels_last and dims == 2:
        x = x.to(memory_format=torch.channels_last)
    if channels_last and dims == 3:
        x = x.to(memory_format=torch.channels_last_3d)
    return x


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
def test_training_matches_torch_composition(act, slope, residual, dims, channels_last):
    x = make_input(dims, channels_last, 1).requires_grad_()
    r = make_input(dims, channels_last, 2).requires_grad_() if residual else None
    fused = MODULES[dims](5, act=act, negative_slope=slope).double()
    with torch.no_grad():
        fused.weight.copy_(torch.tensor([1.5, -0.7, 0.3, 2.0, -1.1]))
        fused.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5]))
    stock = copy.deepcopy(fused)
    y = fused(x, r)
    want = composition(x, r, stock, act, slope)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.running_mean, stock.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fused.running_var, stock.running_var, rtol=1e-12, atol=1e-14)
    assert int(fused.num_batches_tracked) == 1
    dy = torch.randn_like(y)
    inputs = [x, fused.weight, fused.bias] + ([r] if residual else [])
    got = torch.autograd.grad(y, inputs, dy)
    stock_inputs = [x, stock.weight, stock.bias] + ([r] if residual else [])
    exp = torch.autograd.grad(want, stock_inputs, dy)
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
def test_gradcheck(act, slope):
    torch.manual_seed(3)
    x = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    r = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    w = torch.tensor([1.3, -0.6], dtype=torch.double, requires_grad=True)
    b = torch.tensor([0.2, -0.1], dtype=torch.double, requires_grad=True)
    f = lambda x, r, w, b: bt.batch_norm_act(x, r, w, b, None, None, True, 0.1, 1e-5, act, slope)
    assert torch.autograd.gradcheck(f, (x, r, w, b))
    if act != "relu":
        g = lambda x, w, b: bt.batch_norm_act(x, None, w, b, None, None, True, 0.1, 1e-5, act,
                                              max(slope, 0.1), save_output=True)
        assert torch.autograd.gradcheck(g, (x, w, b))


def test_relu_gradient_at_zero_is_torchs():
    """gamma = beta = 0: every z is exactly 0; torch's relu passes no gradient there."""
    x = torch.randn(4, 3, 5, requires_grad=True)
    fused = bt.BatchNormAct1d(3)
    stock = torch.nn.BatchNorm1d(3)
    for m in (fused, stock):
        with torch.no_grad():
            m.weight.zero_()
    fused(x).sum().backward()
    torch.relu(stock(x)).sum().backward()
    assert torch.equal(fused.bias.grad, stock.bias.grad)
    assert torch.equal(fused.bias.grad, torch.zeros(3))


@pytest.mark.parametrize("gamma", [-2.0, -0.1, 1e-3, 1.0, 5.0])
@pytest.mark.parametrize("act,slope", [("identity", 0.0), ("leaky_relu", 0.01)])
def test_save_output_matches_abs_weight_composition(gamma, act, slope):
    """Backward from the output in float64: the layer is bn with |gamma| + 1e-5."""
    x = make_input(2, True, 4).requires_grad_()
    fused = bt.BatchNormAct2d(5, act=act, negative_slope=slope, save_output=True).double()
    with torch.no_grad():
        fused.weight.fill_(gamma)
        fused.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5]))
    stock = copy.deepcopy(fused)
    y = fused(x)
    want = composition(x, None, stock, act, slope, abs_weight=True)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, fused.weight, fused.bias], dy)
    exp = torch.autograd.grad(want, [x, stock.weight, stock.bias], dy)
    # x_hat from y: float64 rounding of y over gamma_eff (see bnorm/fused.hpp).
    tol = 64 * torch.finfo(torch.double).eps * (1 + 0.5 / (abs(gamma) + 1e-5)) * 10
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=tol, atol=tol * e.abs().max().item())


def saved_bytes(module, *inputs):
    """Bytes autograd keeps for backward, by the saved-tensor hooks (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.storage().data_ptr()] = t.storage().size() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*inputs)
    return sum(storages.values())


def test_save_output_keeps_no_input():
    x = torch.randn(8, 16, 32, 32, requires_grad=True)
    plain = bt.BatchNormAct2d(16, act="leaky_relu")
    abn = bt.BatchNormAct2d(16, act="leaky_relu", save_output=True)
    with_x, without_x = saved_bytes(plain, x), saved_bytes(abn, x)
    assert with_x - without_x == x.numel() * x.element_size()


def test_eval_matches_torch_and_has_gradients():
    x = make_input(2, False, 5)
    r = make_input(2, False, 6)
    fused = bt.BatchNormAct2d(5, act="leaky_relu", negative_slope=0.2).double()
    fused(x)  # one training step for non-trivial running statistics
    fused.eval()
    stock = copy.deepcopy(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, r), composition(x, r, stock, "leaky_relu", 0.2),
                                   rtol=1e-12, atol=1e-12)
    xg = x.clone().requires_grad_()
    fused(xg, r).sum().backward()
    xs = x.clone().requires_grad_()
    composition(xs, r, stock, "leaky_relu", 0.2).sum().backward()
    torch.testing.assert_close(xg.grad, xs.grad)
    torch.testing.assert_close(fused.weight.grad, stock.weight.grad)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="invertible"):
        bt.BatchNormAct2d(4, act="relu", save_output=True)
    with pytest.raises(ValueError, match="act must be 'identity', 'relu' or 'leaky_relu', got 'gelu'"):
        bt.BatchNormAct2d(4, act="gelu")
    m = bt.BatchNormAct2d(4, act="identity", save_output=True)
    with pytest.raises(ValueError, match="residual"):
        m(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="residual must have input's sizes"):
        bt.BatchNormAct2d(4)(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 2))


class ConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(6)
        self.conv2 = torch.nn.Conv2d(6, 4, 3, groups=2)
        self.bn2 = bt.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 5 * 5, 7)
        self.bn3 = torch.nn.BatchNorm1d(7)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.bn2(self.conv2(x))
        return self.bn3(self.fc(x.flatten(1)))


@pytest.mark.parametrize("dtype,tol", [(torch.double, 1e-12), (torch.float, 64 * 2.0**-24)])
def test_fold_matches_conv_then_bn(dtype, tol):
    torch.manual_seed(7)
    model = ConvBN().to(dtype)
    for _ in range(3):
        model(torch.randn(8, 3, 7, 7, dtype=dtype) * 3 + 1)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_var") and m.weight is not None:
                m.weight.uniform_(-2, 2)
                m.bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(5, 3, 7, 7, dtype=dtype)
    with torch.no_grad():
        want = model.double()(x.double())
        model.to(dtype)
        folded = bt.fold(copy.deepcopy(model))
        got = folded(x).double()
    assert not any("BatchNorm" in type(m).__name__ for m in folded.modules())
    assert (got - want).abs().max().item() <= tol * want.abs().max().item()


def test_fold_requires_eval():
    with pytest.raises(ValueError, match="eval mode"):
        bt.fold(ConvBN())


class Untraceable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return torch.relu(self.bn(x))
        return x


def test_fuse_warns_and_leaves_untraceable_models():
    model = Untraceable()
    with pytest.warns(UserWarning, match="cannot trace Untraceable"):
        out = bt.fuse(model)
    assert out is model and type(model.bn) is torch.nn.BatchNorm2d


def count(model, cls):
    return sum(1 for m in model.modules() if isinstance(m, cls))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
def test_fuse_resnet18_step_matches_torch_float64(memory_format):
    """fuse(resnet18): 17 fused modules (stem BN+ReLU, and per BasicBlock BN+ReLU and
    BN+add+ReLU); one training step and the eval logits, each float32 run against
    the float64 stock model on the same ReLU and max-pool branches (test_torch_models)."""
    torch.manual_seed(0)
    stock = torchvision.models.resnet18(num_classes=10)
    initial = copy.deepcopy(stock)
    fused = bt.fuse(copy.deepcopy(stock))
    assert count(fused, bt.BatchNormAct2d) == 17
    assert count(fused, torch.nn.BatchNorm2d) == 3  # the downsample branches' BN
    assert {k for k, _ in fused.named_parameters()} == {k for k, _ in stock.named_parameters()}

    x = torch.randn(4, 3, 64, 64, dtype=torch.double)
    x_eval = torch.randn(4, 3, 64, 64, dtype=torch.double)
    target = torch.randint(0, 10, (4,))
    runs = {}
    for label, model in (("torch", stock), ("bnorm", fused)):
        branches = Branches()
        # The fused modules apply their ReLU inside: record its mask where the
        # stock model's F.relu would have recorded it (same order).
        hooks = [m.register_forward_hook(
                     lambda mod, inp, out: branches.decisions.append(out.detach() > 0)
                     if not branches.replay else None)
                 for m in model.modules() if isinstance(m, bt.BatchNormAct2d)]
        reference = copy.deepcopy(initial).double()
        with branches.patched(replay=False):
            runs[label] = run_step(model, x.float(), target, x_eval.float(), memory_format)
        for h in hooks:
            h.remove()
        with branches.patched(replay=True):
            runs[label + " float64"] = run_step(reference, x, target, x_eval, memory_format)
    ours, theirs = runs["bnorm"], runs["torch"]
    assert ours.keys() == theirs.keys()
    worst = []
    for key in ours:
        kind = category(key)
        s_ours = None if kind is None else category_norm(runs["bnorm float64"], kind)
        s_theirs = None if kind is None else category_norm(runs["torch float64"], kind)
        err_ours = relative_error(ours[key], runs["bnorm float64"][key], s_ours)
        err_theirs = relative_error(theirs[key], runs["torch float64"][key], s_theirs)
        worst.append((err_ours / max(err_theirs, FLOOR), key, err_ours, err_theirs))
    worst.sort(reverse=True)
    ratio, key, err_ours, err_theirs = worst[0]
    oracle.NOTES.append(f"fuse(resnet18) {memory_format}: worst ratio {ratio:.2f} ({key}: "
                        f"{err_ours:.2g} vs torch {err_theirs:.2g})")
    assert ratio <= ALLOWED_RATIO, f"{key}: {err_ours:.3g} vs torch's {err_theirs:.3g}"


# ------------------------------------------------- C++ autograd and TorchScript

@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
def test_gradgradcheck(act, slope):
    """Double backward (C++: batch norm's analytic formula on dz) against finite differences."""
    torch.manual_seed(8)
    x = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    r = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    w = torch.tensor([1.3, -0.6], dtype=torch.double, requires_grad=True)
    b = torch.tensor([0.2, -0.1], dtype=torch.double, requires_grad=True)
    f = lambda x, r, w, b: bt.batch_norm_act(x, r, w, b, None, None, True, 0.1, 1e-5, act, slope)
    assert torch.autograd.gradgradcheck(f, (x, r, w, b))
    # InPlace-ABN's |weight| + eps without save_output: the abs enters the formula.
    g = lambda x, w, b: torch.ops.bnorm.fused_batch_norm_train(
        x, None, w, b, None, None, 0.1, 0, 1e-5, act, slope, True, 1e-5)[0]
    assert torch.autograd.gradgradcheck(g, (x, w, b))


def test_double_backward_from_the_output_raises():
    x = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    m = bt.BatchNormAct1d(2, act="leaky_relu", save_output=True).double()
    (dx,) = torch.autograd.grad(m(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported with save_output"):
        dx.sum().backward()


@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
def test_eval_gradcheck(act, slope):
    """Eval with gradients (frozen statistics): the differentiable composition."""
    torch.manual_seed(9)
    x = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    r = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    w = torch.tensor([1.3, -0.6], dtype=torch.double, requires_grad=True)
    b = torch.tensor([0.2, -0.1], dtype=torch.double, requires_grad=True)
    rm, rv = torch.tensor([0.3, -0.2], dtype=torch.double), torch.tensor([0.5, 2.0],
                                                                          dtype=torch.double)
    for abs_weight in (False, True):
        f = lambda x, r, w, b: torch.ops.bnorm.fused_batch_norm_eval(
            x, r, w, b, rm, rv, 1e-5, act, slope, abs_weight, 1e-5)
        assert torch.autograd.gradcheck(f, (x, r, w, b))
        assert torch.autograd.gradgradcheck(f, (x, r, w, b))


def scripted_copy(module):
    """torch.jit.script of the module, saved and loaded back (the deployed form)."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(copy.deepcopy(module)), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("save_output", [False, True], ids=["plain", "save_output"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_scripted_module_matches_torch_composition(channels_last, save_output):
    act, slope = ("leaky_relu", 0.1) if save_output else ("relu", 0.0)
    eager = bt.BatchNormAct2d(5, act=act, negative_slope=slope, save_output=save_output).double()
    with torch.no_grad():
        eager.weight.copy_(torch.tensor([1.5, -0.7, 0.3, 2.0, -1.1]))
        eager.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5]))
    stock = copy.deepcopy(eager)
    scripted = scripted_copy(eager)
    assert "bnorm::fused_batch_norm_train" in str(scripted.graph)
    x = make_input(2, channels_last, 1).requires_grad_()
    r = None if save_output else make_input(2, channels_last, 2).requires_grad_()
    # Training step: output, running statistics, counter and gradients.
    y = scripted(x, r)
    want = composition(x, r, stock, act, slope, abs_weight=save_output)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scripted.running_mean, stock.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(scripted.running_var, stock.running_var, rtol=1e-12, atol=1e-14)
    assert int(scripted.num_batches_tracked) == 1
    dy = torch.randn_like(y)
    extra = [] if r is None else [r]
    got = torch.autograd.grad(y, [x, scripted.weight, scripted.bias] + extra, dy)
    exp = torch.autograd.grad(want, [x, stock.weight, stock.bias] + extra, dy)
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)
    # Eval: the running statistics normalize.
    scripted.eval()
    stock.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, r),
                                   composition(x, r, stock, act, slope, abs_weight=save_output),
                                   rtol=1e-12, atol=1e-12)


def test_scripted_module_errors():
    scripted = torch.jit.script(bt.BatchNormAct2d(4, act="identity", save_output=True))
    with pytest.raises(Exception, match="cannot take a residual"):
        scripted(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3))
    with pytest.raises(Exception, match="expected 4D input"):
        scripted(torch.randn(2, 4, 3))
    # The operator checks what the module's constructor checks in eager mode.
    with pytest.raises(ValueError, match="invertible"):
        torch.ops.bnorm.fused_batch_norm_train(torch.randn(2, 4, 3), None, None, None, None,
                                               None, 0.1, 0, 1e-5, "relu", 0.0, True, 1e-5,
                                               True)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
def test_scripted_fuse_resnet18_step_and_eval(memory_format):
    """torch.jit.script(fuse(resnet18)), saved and loaded: a training step (loss, every
    gradient, running statistics) and the eval logits equal the eager fused model's,
    which test_fuse_resnet18_step_matches_torch_float64 holds to the float64 stock model;
    and they agree with the stock float32 model to float32 accuracy."""
    torch.manual_seed(0)
    stock = torchvision.models.resnet18(num_classes=10).to(memory_format=memory_format)
    eager = bt.fuse(copy.deepcopy(stock))
    scripted = scripted_copy(eager)
    x = torch.randn(4, 3, 64, 64).to(memory_format=memory_format)
    target = torch.randint(0, 10, (4,))
    results = []
    for model in (scripted, eager, stock):
        model.train()
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        model.eval()
        with torch.no_grad():
            logits = model(x)
        results.append((loss.detach(), grads, stats, logits))
    (s_loss, s_grads, s_stats, s_logits), (e_loss, e_grads, e_stats, e_logits) = results[:2]
    assert s_grads.keys() == e_grads.keys() == results[2][1].keys()
    torch.testing.assert_close(s_loss, e_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s_logits, e_logits, rtol=1e-5, atol=1e-5)
    for k in e_grads:
        torch.testing.assert_close(s_grads[k], e_grads[k], rtol=1e-4, atol=1e-5, msg=k)
    for k in e_stats:
        torch.testing.assert_close(s_stats[k], e_stats[k], rtol=1e-5, atol=1e-6, msg=k)
    # Against torch's stock model: float32 agreement of the whole step.
    t_loss, t_grads, t_stats, t_logits = results[2]
    torch.testing.assert_close(s_loss, t_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_logits, t_logits, rtol=1e-3, atol=1e-3)
    norm = torch.cat([g.flatten() for g in t_grads.values()]).norm()
    diff = torch.cat([(s_grads[k] - t_grads[k]).flatten() for k in t_grads]).norm()
    assert diff <= 1e-3 * norm, f"gradients differ from torch's by {diff / norm:.3g} (relative)"


# ------------------------------------------------------------ empty batch (N = 0)

@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_empty_batch_matches_torch(channels_last, residual):
    """N = 0: empty output and gradients, zero dweight/dbias, running statistics untouched,
    the batch counted: as torch's BatchNorm2d + add + ReLU and bnorm's BatchNorm2d."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(0, 5, 3, 4).to(memory_format=fmt).requires_grad_()
    r = torch.randn(0, 5, 3, 4).to(memory_format=fmt).requires_grad_() if residual else None
    fused = bt.BatchNormAct2d(5)
    stock = torch.nn.BatchNorm2d(5)
    plain = bt.BatchNorm2d(5)
    for m in (fused, stock, plain):
        with torch.no_grad():
            m.running_mean.fill_(0.25)
            m.running_var.fill_(2.0)
    y = fused(x, r)
    z = stock(x)
    want = torch.relu(z + r if residual else z)
    assert y.shape == want.shape == x.shape
    y.sum().backward()
    dx_fused = x.grad.clone()
    x.grad = None
    want.sum().backward()
    assert dx_fused.shape == x.grad.shape == x.shape
    torch.testing.assert_close(fused.weight.grad, stock.weight.grad)
    torch.testing.assert_close(fused.bias.grad, stock.bias.grad)
    assert torch.equal(fused.weight.grad, torch.zeros(5))
    plain(x)
    for m in (stock, plain):
        torch.testing.assert_close(fused.running_mean, m.running_mean)
        torch.testing.assert_close(fused.running_var, m.running_var)
        assert int(fused.num_batches_tracked) == int(m.num_batches_tracked)
    assert torch.equal(fused.running_mean, torch.full((5,), 0.25))
    fused.eval()
    stock.eval()
    with torch.no_grad():
        assert fused(x.detach(), r).shape == x.shape
    # The backward operator alone, every output asked for.
    dx, dw, db, dr = torch.ops.bnorm.fused_batch_norm_backward(
        torch.zeros_like(x), torch.zeros_like(x), x.detach(), fused.weight, fused.bias,
        torch.zeros(5), torch.ones(5), "relu", 0.0, False, 1e-5, False, [True, True, True, True])
    assert dx.shape == dr.shape == x.shape
    assert torch.equal(dw, torch.zeros(5)) and torch.equal(db, torch.zeros(5))
