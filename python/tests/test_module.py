"""bnorm.torch as a drop-in for torch.nn.BatchNormXd: gradients, training, state_dict."""

import inspect

import bnorm.torch as bt
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.stateless import functional_call

PAIRS = [(bt.BatchNorm1d, nn.BatchNorm1d), (bt.BatchNorm2d, nn.BatchNorm2d),
         (bt.BatchNorm3d, nn.BatchNorm3d)]
MEMORY = {4: torch.channels_last, 5: torch.channels_last_3d}


def channels_last(t):
    return t.contiguous(memory_format=MEMORY[t.dim()])


# ---------------------------------------------------------------- gradcheck

GRADCHECK_SHAPES = [(bt.BatchNorm1d, (5, 3), False), (bt.BatchNorm1d, (3, 2, 4), False),
                    (bt.BatchNorm2d, (3, 2, 3, 2), False), (bt.BatchNorm2d, (3, 2, 3, 2), True),
                    (bt.BatchNorm3d, (2, 2, 2, 3, 2), False),
                    (bt.BatchNorm3d, (2, 2, 2, 3, 2), True)]


@pytest.mark.parametrize("cls,shape,cl", GRADCHECK_SHAPES,
                         ids=[f"{c.__name__}-{len(s)}d{'-cl' if cl else ''}"
                              for c, s, cl in GRADCHECK_SHAPES])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_gradcheck(cls, shape, cl, training, affine):
    g = torch.Generator().manual_seed(11)
    c = shape[1]
    m = cls(c, eps=1e-3, affine=affine, dtype=torch.float64).train(training)
    with torch.no_grad():
        m.running_mean.normal_(generator=g)
        m.running_var.uniform_(0.5, 2, generator=g)
    x = torch.randn(shape, dtype=torch.float64, generator=g) * 2 + 1
    if cl:
        x = channels_last(x)
    x.requires_grad_(True)
    if affine:
        w = torch.empty(c, dtype=torch.float64).uniform_(0.5, 2, generator=g).requires_grad_()
        b = torch.randn(c, dtype=torch.float64, generator=g).requires_grad_()
        f = lambda x, w, b: functional_call(m, {"weight": w, "bias": b}, (x,))
        inputs = (x, w, b)
    else:
        f, inputs = m, (x,)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-9, rtol=1e-6)


def test_gradcheck_functional_with_bias_only():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 2, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, generator=g).requires_grad_()
    f = lambda x, b: bt.batch_norm(x, None, None, None, b, training=True)
    assert torch.autograd.gradcheck(f, (x, b), eps=1e-6, atol=1e-9, rtol=1e-6)


# ----------------------------------------------------- interface of the modules

@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_constructor_matches_torch(ours, theirs):
    sig_ours = inspect.signature(ours.__init__).parameters
    sig_theirs = inspect.signature(theirs.__init__).parameters
    assert [(p.name, p.default) for p in sig_ours.values()] == \
        [(p.name, p.default) for p in sig_theirs.values()]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_parameters_buffers_and_state_dict_keys_match_torch(ours, theirs, affine, track):
    a = ours(4, affine=affine, track_running_stats=track, dtype=torch.float64)
    b = theirs(4, affine=affine, track_running_stats=track, dtype=torch.float64)
    assert list(a.state_dict()) == list(b.state_dict())
    for name, value in b.state_dict().items():
        assert a.state_dict()[name].dtype == value.dtype
        assert torch.equal(a.state_dict()[name], value), name
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    assert [n for n, _ in a.named_buffers()] == [n for n, _ in b.named_buffers()]
    assert repr(a) == repr(b)


def test_reset_running_stats():
    m = bt.BatchNorm1d(3)
    m(torch.randn(8, 3))
    m.reset_running_stats()
    assert torch.equal(m.running_mean, torch.zeros(3))
    assert torch.equal(m.running_var, torch.ones(3))
    assert int(m.num_batches_tracked) == 0


# ------------------------------------------------------------- channels_last

def _aten_ops(fn):
    """Names of the operators fn runs, from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


COPIES = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy"}


@pytest.mark.parametrize("make", [lambda: channels_last(torch.randn(4, 3, 5, 6)),
                                  lambda: torch.randn(2, 3, 2, 4, 5).to(
                                      memory_format=torch.channels_last_3d),
                                  lambda: torch.randn(4, 3, 5, 6),
                                  lambda: torch.randn(2, 5, 3).transpose(1, 2)],
                         ids=["channels_last", "channels_last_3d", "contiguous", "ncl-as-nlc"])
def test_memory_formats_reach_bnorm_without_a_copy(make):
    x = make().requires_grad_()
    m = bt.BatchNorm2d(3) if x.dim() == 4 else (bt.BatchNorm3d(3) if x.dim() == 5
                                                   else bt.BatchNorm1d(3))
    holder = {}

    def forward():
        holder["y"] = m(x)

    ops = _aten_ops(forward)
    assert "bnorm::batch_norm_train" in ops
    assert not ops & COPIES, ops & COPIES
    y = holder["y"]
    assert y.stride() == x.stride(), (y.stride(), x.stride())
    dy = torch.empty_like(y).normal_()
    ops = _aten_ops(lambda: y.backward(dy))
    assert "bnorm::batch_norm_backward" in ops
    assert not ops & COPIES, ops & COPIES
    assert x.grad.stride() == x.stride()


def test_other_strides_are_packed_like_torch():
    x = torch.randn(4, 6, 5, 6)[:, ::2]  # every other channel: neither layout
    ours, theirs = bt.BatchNorm2d(3), nn.BatchNorm2d(3)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)


# ------------------------------------------------------- momentum=None, modes

def test_cumulative_average_over_steps_matches_torch():
    torch.manual_seed(1)
    ours, theirs = bt.BatchNorm1d(4, momentum=None), nn.BatchNorm1d(4, momentum=None)
    batches = [torch.randn(6, 4, 3) * (i + 1) + i for i in range(6)]
    for x in batches:
        ours(x)
        theirs(x)
    stacked = torch.stack([x.transpose(0, 1).reshape(4, -1) for x in batches]).double()
    torch.testing.assert_close(ours.running_mean.double(), stacked.mean(dim=2).mean(dim=0))
    torch.testing.assert_close(ours.running_var.double(), stacked.var(dim=2).mean(dim=0))
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=2e-6, atol=1e-7)


def test_eval_without_tracked_stats_uses_the_batch():
    torch.manual_seed(2)
    m = bt.BatchNorm2d(3, affine=False, track_running_stats=False).eval()
    x = torch.randn(5, 3, 4, 4) * 3 + 2
    y = m(x)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + m.eps))


# ------------------------------------------------------------- training a model

def conv_model(bn, dtype):
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), bn(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 5 * 5, 4)).to(dtype)


@pytest.mark.parametrize("dtype,memory,momentum", [
    (torch.float32, torch.contiguous_format, 0.1),
    (torch.float32, torch.channels_last, 0.1),
    (torch.float64, torch.contiguous_format, 0.1),
    (torch.float64, torch.channels_last, None),
])
def test_sgd_steps_match_torch(dtype, memory, momentum):
    """20 SGD steps: the same losses and the same state_dict as with torch's BatchNorm2d."""
    torch.manual_seed(3)
    bn = lambda cls: (lambda c: cls(c, momentum=momentum))
    theirs = conv_model(bn(nn.BatchNorm2d), dtype).to(memory_format=memory)
    ours = conv_model(bn(bt.BatchNorm2d), dtype).to(memory_format=memory)
    ours.load_state_dict(theirs.state_dict())
    # The two differ by roundings (about 2 eps seen after 20 steps); the margin
    # covers other CPUs, where torch's kernels round differently.
    tol = 200 * torch.finfo(dtype).eps
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(4)
    for step in range(20):
        x = (torch.randn(8, 3, 5, 5, generator=g) * 2 + 1).to(dtype).to(memory_format=memory)
        label = torch.randint(0, 4, (8,), generator=g)
        losses = []
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), label)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=tol, abs=tol), f"step {step}"
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    for key, value in theirs_state.items():
        torch.testing.assert_close(ours_state[key], value, rtol=tol, atol=tol)
    assert int(ours_state["1.num_batches_tracked"]) == 20
    x = torch.randn(8, 3, 5, 5, generator=g).to(dtype).to(memory_format=memory)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=tol, atol=tol)


# ------------------------------------------------------------- state_dict

def test_state_dict_round_trip_with_torch():
    torch.manual_seed(5)
    theirs = nn.BatchNorm2d(5, momentum=0.3)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 2)
        theirs.bias.normal_()
    for _ in range(3):
        theirs(torch.randn(4, 5, 3, 3) * 2 + 1)
    ours = bt.BatchNorm2d(5, momentum=0.3)
    ours.load_state_dict(theirs.state_dict())
    assert int(ours.num_batches_tracked) == 3
    x = torch.randn(4, 5, 3, 3)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))
    back = nn.BatchNorm2d(5, momentum=0.3)
    back.load_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    # Both continue training from the same state to the same state.
    ours.train(), back.train()
    x = torch.randn(4, 5, 3, 3)
    torch.testing.assert_close(ours(x), back(x))
    for key, value in back.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)


def test_loads_a_state_dict_from_before_num_batches_tracked():
    theirs = nn.BatchNorm1d(3)
    state = theirs.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    ours = bt.BatchNorm1d(3)
    ours.num_batches_tracked.fill_(7)
    ours.load_state_dict(state)  # strict: the missing key must be supplied
    assert int(ours.num_batches_tracked) == 0
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        state._metadata[""]["version"] = 2
        ours.load_state_dict(state)
