"""Stock torchvision models with bnorm.torch inside: one training step and an
eval forward, float32, against torch's own model run in float64.

For each result (loss, every parameter gradient, every running statistic
after the step, eval logits) the error is ||result - float64 result|| /
||float64 result|| (for a gradient, a running mean or a running variance,
over the norm of all gradients, running means or running variances). bnorm's converted model may be at most 4x as far from
the float64 run as torch's stock float32 model is (with a floor of a few
float32 roundings, for results torch happens to get nearly exact).

The networks are piecewise smooth: ReLU, ReLU6 and max pooling branch on
their inputs, and an input within float32's rounding of a kink (a batch-norm
output of 1e-7 feeding a ReLU) legitimately takes the other branch in
float32, which changes a gradient by O(1) at that element. Such a flip is
luck, not accuracy, and it hits torch's float32 run as well as bnorm's. So
each float32 run is compared with the float64 run that takes the same
branches: the float32 run records every ReLU mask, ReLU6 clip and max-pool
argmax, and its float64 reference replays them. Dropout is set to p = 0.
"""

import contextlib
import copy

import pytest
import torch
import torchvision

import bnorm.torch as bt
import oracle

FLOAT32_EPS = torch.finfo(torch.float32).eps
ALLOWED_RATIO = 4.0
FLOOR = 8 * FLOAT32_EPS

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
}


class Branches:
    """Records the branch decisions of ReLU, ReLU6 and max pooling, or replays them."""

    def __init__(self):
        self.decisions = []
        self.replay = False

    @contextlib.contextmanager
    def patched(self, replay):
        functional = torch.nn.functional
        saved = functional.relu, functional.hardtanh, functional.max_pool2d
        self.replay, position = replay, iter(range(len(self.decisions)))

        def decide(make):
            if self.replay:
                return self.decisions[next(position)]
            decision = make()
            self.decisions.append(decision)
            return decision

        def relu(input, inplace=False):
            mask = decide(lambda: input.detach() > 0)
            return input.mul_(mask) if inplace else input * mask

        def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
            low, high = decide(lambda: (input.detach() <= min_val, input.detach() >= max_val))
            inside = ~(low | high)
            out = input * inside + low * min_val + high * max_val
            return input.copy_(out) if inplace else out

        def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                       return_indices=False):
            indices = decide(lambda: saved[2](input.detach(), kernel_size, stride, padding,
                                              dilation, ceil_mode, return_indices=True)[1])
            out = input.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
            return (out, indices) if return_indices else out

        functional.relu, functional.hardtanh, functional.max_pool2d = relu, hardtanh, max_pool2d
        try:
            yield
        finally:
            functional.relu, functional.hardtanh, functional.max_pool2d = saved


def run_step(model, x, target, x_eval, memory_format):
    """Loss, gradients and running statistics of one training step; eval logits after it."""
    model = model.to(memory_format=memory_format)
    x = x.to(memory_format=memory_format)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    results = {"loss": loss.detach()}
    for name, p in model.named_parameters():
        results["grad " + name] = p.grad.detach().clone()
    for name, b in model.named_buffers():
        if b.is_floating_point():
            results["buffer " + name] = b.detach().clone()
    model.eval()
    with torch.no_grad():
        results["eval logits"] = model(x_eval.to(memory_format=memory_format))
    return results


def relative_error(value, reference, scale=None):
    reference = reference.double()
    scale = reference.norm().item() if scale is None else scale
    return (value.double() - reference).norm().item() / (scale if scale > 0 else 1.0)


def category(key):
    """Gradients, running means and running variances each form one vector."""
    if key.startswith("grad "):
        return "grad"
    if key.startswith("buffer "):
        return key.rsplit(".", 1)[-1]
    return None


def category_norm(results, kind):
    """Norm of all results of one category: the yardstick for each member's
    error, since some members are zero in exact arithmetic and only rounding
    noise in float32 (a bias whose shift the next batch norm removes, the
    running mean of a channel that is dead at initialization)."""
    return sum(v.double().norm().item() ** 2 for k, v in results.items()
               if category(k) == kind) ** 0.5


def count_batch_norms(model, cls):
    return sum(1 for m in model.modules() if type(m) is cls)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_matches_torch_float64(name, memory_format):
    torch.manual_seed(0)
    stock = MODELS[name]()
    for m in stock.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    initial = copy.deepcopy(stock)
    converted = bt.convert(copy.deepcopy(stock))
    torch_bns = count_batch_norms(stock, torch.nn.BatchNorm2d)
    assert torch_bns > 10
    assert count_batch_norms(converted, bt.BatchNorm2d) == torch_bns
    assert count_batch_norms(converted, torch.nn.BatchNorm2d) == 0

    x = torch.randn(4, 3, 64, 64, dtype=torch.double)
    x_eval = torch.randn(4, 3, 64, 64, dtype=torch.double)
    target = torch.randint(0, 10, (4,))
    runs = {}
    for label, model in (("torch", stock), ("bnorm", converted)):
        branches = Branches()
        reference = copy.deepcopy(initial).double()
        with branches.patched(replay=False):
            runs[label] = run_step(model, x.float(), target, x_eval.float(), memory_format)
        with branches.patched(replay=True):
            runs[label + " float64"] = run_step(reference, x, target, x_eval, memory_format)
    ours, theirs = runs["bnorm"], runs["torch"]
    assert runs["torch float64"].keys() == theirs.keys() == ours.keys()
    worst = []
    def scale(label, key):
        kind = category(key)
        return None if kind is None else category_norm(runs[label + " float64"], kind)

    for key in ours:
        err_ours = relative_error(ours[key], runs["bnorm float64"][key], scale("bnorm", key))
        err_theirs = relative_error(theirs[key], runs["torch float64"][key], scale("torch", key))
        worst.append((err_ours / max(err_theirs, FLOOR), key, err_ours, err_theirs))
    worst.sort(reverse=True)
    ratio, key, err_ours, err_theirs = worst[0]
    largest = max((e, k) for _, k, e, _ in worst), max((e, k) for _, k, _, e in worst)
    oracle.NOTES.append(f"{name} {'channels_last' if memory_format == torch.channels_last else 'nchw'}: "
                        f"largest relative error bnorm {largest[0][0]:.2g} ({largest[0][1]}), "
                        f"torch {largest[1][0]:.2g} ({largest[1][1]}); "
                        f"worst ratio {ratio:.2f} ({key})")
    assert ratio <= ALLOWED_RATIO, (
        f"{key}: bnorm's float32 error {err_ours:.3g} vs torch's {err_theirs:.3g} "
        f"(next: {worst[1:4]})")


def test_convert_carries_state_and_flags():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=None),
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(4 * 6 * 6, eps=1e-3)),
        torch.nn.BatchNorm1d(144, affine=False, track_running_stats=False))
    model(torch.randn(5, 3, 8, 8))
    model[1].weight.requires_grad_(False)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    converted = bt.convert(model)
    assert type(converted[1]) is bt.BatchNorm2d and type(converted[2][1]) is bt.BatchNorm1d
    assert type(converted[3]) is bt.BatchNorm1d
    assert converted[1].momentum is None and converted[2][1].eps == 1e-3
    assert not converted[1].weight.requires_grad and converted[2][1].weight.requires_grad
    assert all(not m.training for m in converted.modules())
    after = converted.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    single = bt.convert(torch.nn.BatchNorm3d(2))
    assert type(single) is bt.BatchNorm3d
    # Not a BatchNormXd: left alone.
    sync = torch.nn.SyncBatchNorm(3)
    assert bt.convert(sync) is sync


def test_inplace_ops_after_batch_norm_train():
    """torchvision's ReLU(inplace=True) and `out += identity` on batch-norm outputs."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    results = []
    for cls in (torch.nn.BatchNorm2d, bt.BatchNorm2d):
        bn = cls(3)
        y = bn(x)
        y += x
        torch.relu_(y)
        y.sum().backward()
        results.append((y.detach(), x.grad.clone()))
        x.grad = None
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
