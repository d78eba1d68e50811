"""Fused batch norm for networks: BatchNormAct1d/2d/3d, fuse(model), fold(model).

``BatchNormActXd(num_features, ..., act="relu", negative_slope=0.01,
save_output=False)`` computes ``act(bn(x) + residual)`` in one pass over
memory (torch.ops.bnorm.fused_batch_norm_*, bnorm/fused.hpp). Its backward
reads the activation's mask off the output, so nothing beyond the output
is kept for it. ``save_output=True`` is the backward-from-output mode of
InPlace-ABN (Rota Bulo et al., CVPR 2018): the input is not kept at all,
x_hat is recomputed from the output, which needs an invertible activation
(``"identity"`` or ``"leaky_relu"`` with a positive slope) and no residual;
the layer then scales by ``|weight| + weight_eps`` (so a channel cannot flip
sign, and gamma near 0 cannot blow up the recovered x_hat).

The operators' autograd is C++, so the modules can be scripted
(``torch.jit.script``), alone or inside ``fuse(model)``, and saved.

``fuse(model)`` rewrites, with torch.fx, BatchNorm followed by ReLU and
BatchNorm followed by an addition and a ReLU (torchvision's BasicBlock and
Bottleneck) into BatchNormAct modules holding the same state.
``fold(model)`` folds every eval BatchNorm into the Conv or Linear layer
before it.
"""

import operator
import warnings
from typing import Optional

import torch
from torch import Tensor

from . import _ops  # noqa: F401  (registers torch.ops.bnorm)
from .modules import _BatchNorm, _batches_seen

# InPlace-ABN's weight_eps: save_output layers scale by |weight| + this.
_WEIGHT_EPS = 1e-5


def batch_norm_act(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                   bias: Optional[Tensor], running_mean: Optional[Tensor],
                   running_var: Optional[Tensor], training: bool, momentum: Optional[float],
                   eps: float, act: str = "relu", negative_slope: float = 0.01,
                   save_output: bool = False, weight_eps: float = _WEIGHT_EPS,
                   num_batches_tracked: int = 0) -> Tensor:
    """act(batch_norm(x) + residual), functional form.

    momentum as torch.nn.functional.batch_norm's: this batch's weight in the
    running statistics, or None for the cumulative average, which needs
    num_batches_tracked (batches seen, this one included). act: "identity",
    "relu" or "leaky_relu" (negative_slope).

    Training (or no running statistics) normalizes with the batch statistics
    and updates the running ones in place when given; otherwise the running
    statistics normalize. Autograd runs in C++ (double backward included,
    except with save_output=True).
    """
    torch.ops.bnorm.check_epilogue(act, negative_slope, save_output, weight_eps, save_output,
                                   residual is not None)
    if training or running_mean is None or running_var is None:
        return torch.ops.bnorm.fused_batch_norm_train(x, residual, weight, bias, running_mean,
                                                      running_var, momentum, num_batches_tracked,
                                                      eps, act, negative_slope, save_output,
                                                      weight_eps, save_output)[0]
    return torch.ops.bnorm.fused_batch_norm_eval(x, residual, weight, bias, running_mean,
                                                 running_var, eps, act, negative_slope,
                                                 save_output, weight_eps)


class _BatchNormAct(_BatchNorm):
    """BatchNorm with a fused residual addition and activation (scriptable)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, act: str = "relu",
                 negative_slope: float = 0.01, save_output: bool = False, device=None,
                 dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        # The core's checks of the settings (act, slope; with save_output, an
        # invertible act), at construction rather than at the first forward.
        torch.ops.bnorm.check_epilogue(act, float(negative_slope), save_output, _WEIGHT_EPS,
                                       save_output, False)
        self.act = act
        self.negative_slope = float(negative_slope)
        self.save_output = save_output
        # An attribute, not the global, so that TorchScript sees a constant.
        self.weight_eps = _WEIGHT_EPS

    def extra_repr(self):
        return (super().extra_repr() + f", act={self.act!r}"
                + (f", negative_slope={self.negative_slope}" if self.act == "leaky_relu" else "")
                + (", save_output=True" if self.save_output else ""))

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        self._check_input_dim(input)
        # The decisions of BatchNorm (modules.py): batch statistics in
        # training or when none are tracked, running statistics otherwise.
        counter = self.num_batches_tracked
        batches, counts = _batches_seen(self.momentum, counter, self.training,
                                        self.track_running_stats)
        pass_stats = not self.training or self.track_running_stats
        running_mean = self.running_mean if pass_stats else None
        running_var = self.running_var if pass_stats else None
        if not self.training and running_mean is not None and running_var is not None:
            y = torch.ops.bnorm.fused_batch_norm_eval(input, residual, self.weight, self.bias,
                                                      running_mean, running_var, self.eps,
                                                      self.act, self.negative_slope,
                                                      self.save_output,
                                                      self.weight_eps)
        else:
            y = torch.ops.bnorm.fused_batch_norm_train(input, residual, self.weight, self.bias,
                                                       running_mean, running_var,
                                                       self.momentum, batches, self.eps,
                                                       self.act, self.negative_slope,
                                                       self.save_output, self.weight_eps,
                                                       self.save_output)[0]
        # Counted once the batch went through, so a bad input changes nothing.
        if counts and counter is not None:
            counter.add_(1)
        return y


class BatchNormAct1d(_BatchNormAct):
    """act(BatchNorm1d(x) + residual): input (N, C) or (N, C, L)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError("expected 2D or 3D input (got {}D input)".format(input.dim()))


class BatchNormAct2d(_BatchNormAct):
    """act(BatchNorm2d(x) + residual): input (N, C, H, W), contiguous or channels_last."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError("expected 4D input (got {}D input)".format(input.dim()))


class BatchNormAct3d(_BatchNormAct):
    """act(BatchNorm3d(x) + residual): input (N, C, D, H, W)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError("expected 5D input (got {}D input)".format(input.dim()))


_FUSED_FOR = {1: BatchNormAct1d, 2: BatchNormAct2d, 3: BatchNormAct3d}


def _bn_dims(module) -> Optional[int]:
    from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
    if isinstance(module, _BatchNormAct):
        return None
    for dims, classes in ((1, (torch.nn.BatchNorm1d, BatchNorm1d)),
                          (2, (torch.nn.BatchNorm2d, BatchNorm2d)),
                          (3, (torch.nn.BatchNorm3d, BatchNorm3d))):
        if type(module) in classes:
            return dims
    return None


def _fused_from(bn, act: str, negative_slope: float):
    dims = _bn_dims(bn)
    fused = _FUSED_FOR[dims](bn.num_features, bn.eps, bn.momentum, bn.affine,
                             bn.track_running_stats, act=act, negative_slope=negative_slope)
    like = next(iter(bn.state_dict().values()), None)
    if like is not None and like.is_floating_point():
        fused = fused.to(device=like.device, dtype=like.dtype)
    fused.load_state_dict(bn.state_dict())
    if bn.affine:
        fused.weight.requires_grad_(bn.weight.requires_grad)
        fused.bias.requires_grad_(bn.bias.requires_grad)
    fused.train(bn.training)
    return fused


def _relu_of(node, modules) -> Optional[tuple]:
    """(act, negative_slope) when node applies ReLU or LeakyReLU to one input."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) is torch.nn.ReLU:
            return ("relu", 0.0)
        if type(m) is torch.nn.LeakyReLU and m.negative_slope >= 0:
            return ("leaky_relu", float(m.negative_slope))
    if node.op == "call_function" and node.target in (torch.relu, torch.nn.functional.relu,
                                                       torch.relu_):
        return ("relu", 0.0)
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return ("relu", 0.0)
    return None


def _set_submodule(root, target: str, module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer with bnorm's batch-norm modules as leaves (like torch.nn's)."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, _BatchNorm) or super().is_leaf_module(m, qualname)


def _trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    graph = _Tracer().trace(model)
    return torch.fx.GraphModule(model, graph, type(model).__name__)


def fuse(model: torch.nn.Module) -> torch.nn.Module:
    """Rewrites BN -> ReLU and BN -> add -> ReLU into BatchNormAct modules.

    Returns a torch.fx.GraphModule with the same parameter and buffer names
    (each fused module takes its batch norm's name and state), or the model
    itself, unchanged, with a warning, when torch.fx cannot trace it.
    """
    try:
        gm = _trace(model)
    except Exception as e:  # fx raises many kinds: control flow, unsupported ops
        warnings.warn(f"bnorm.torch.fuse: torch.fx cannot trace {type(model).__name__} "
                      f"({type(e).__name__}: {e}); the model is left unchanged", stacklevel=2)
        return model
    modules = dict(gm.named_modules())
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_module" or _bn_dims(modules.get(node.target)) is None:
            continue
        if len(node.users) != 1 or len(node.args) != 1 or node.kwargs:
            continue
        user = next(iter(node.users))
        act = _relu_of(user, modules)
        if act is not None:
            fused = _fused_from(modules[node.target], *act)
            _set_submodule(gm, node.target, fused)
            user.replace_all_uses_with(node)
            graph.erase_node(user)
            continue
        # BN -> add(bn, other) -> ReLU, the add used by the ReLU alone.
        if (user.op == "call_function" and user.target in (operator.add, torch.add, operator.iadd)
                and len(user.args) == 2 and not user.kwargs and len(user.users) == 1):
            other = user.args[1] if user.args[0] is node else user.args[0]
            if other is node or not isinstance(other, torch.fx.Node):
                continue
            relu = next(iter(user.users))
            act = _relu_of(relu, modules)
            if act is None:
                continue
            fused = _fused_from(modules[node.target], *act)
            _set_submodule(gm, node.target, fused)
            with graph.inserting_before(relu):
                new = graph.call_module(node.target, (node.args[0], other))
            relu.replace_all_uses_with(new)
            graph.erase_node(relu)
            graph.erase_node(user)
            graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def fold(model: torch.nn.Module) -> torch.nn.Module:
    """Folds every eval BatchNorm that directly follows a Conv or Linear layer.

    The folded layer computes conv'(x) = bn(conv(x)) with the BN's running
    statistics (torch.ops.bnorm.fold_batch_norm, in double); the BN becomes
    torch.nn.Identity. The model must be in eval mode (folding freezes the
    statistics). Models torch.fx cannot trace are left unchanged with a warning.
    """
    if model.training:
        raise ValueError("bnorm.torch.fold: the model must be in eval mode (call model.eval())")
    try:
        gm = _trace(model)
    except Exception as e:
        warnings.warn(f"bnorm.torch.fold: torch.fx cannot trace {type(model).__name__} "
                      f"({type(e).__name__}: {e}); the model is left unchanged", stacklevel=2)
        return model
    modules = dict(gm.named_modules())
    layers = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or _bn_dims(modules.get(node.target)) is None:
            continue
        prev = node.args[0] if len(node.args) == 1 else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module":
            continue
        layer = modules.get(prev.target)
        bn = modules[node.target]
        if type(layer) not in layers or len(prev.users) != 1 or not bn.track_running_stats:
            continue
        with torch.no_grad():
            w, b = torch.ops.bnorm.fold_batch_norm(layer.weight, layer.bias, bn.weight, bn.bias,
                                                   bn.running_mean, bn.running_var, bn.eps)
            layer.weight.copy_(w)
            if layer.bias is None:
                layer.bias = torch.nn.Parameter(b)
            else:
                layer.bias.copy_(b)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
