"""PyTorch drop-in for torch.nn.BatchNorm1d/2d/3d backed by bnorm's kernels.

The modules take the constructor arguments of torch.nn.BatchNormXd and keep
the same parameters and buffers (weight, bias, running_mean, running_var,
num_batches_tracked), so state_dicts move freely between the two. The work is
done by BatchNormFunction, a torch.autograd.Function that hands the tensors
to bnorm as zero-copy NumPy views: a channels_last tensor is passed as its
(N, *spatial, C) storage order and its output is channels_last again.

Unlike torch.nn.BatchNormXd, a forward that raises leaves num_batches_tracked
and the running statistics untouched.
"""

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from . import _bnorm as _kernels

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormFunction", "batch_norm"]

_DTYPES = (torch.float32, torch.float64)


def _check_tensor(name, t):
    if t.dtype not in _DTYPES:
        raise ValueError(f"bnorm.torch: {name} must be float32 or float64, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"bnorm.torch: {name} must be on the CPU, got {t.device}")


def _to_storage_order(t):
    """Permutation from (N, C, *spatial) to (N, *spatial, C)."""
    return (0, *range(2, t.dim()), 1)


def _from_storage_order(dim):
    """Permutation from (N, *spatial, C) back to (N, C, *spatial)."""
    return (0, dim - 1, *range(1, dim - 1))


def numpy_view(t):
    """(array, channels_last): t as a NumPy array in a layout bnorm reads.

    A contiguous tensor maps to its own (N, C, *spatial) array, a
    channels-last one to its (N, *spatial, C) storage; both share t's memory.
    Any other strides are packed into a contiguous copy, as PyTorch does.
    """
    t = t.detach()
    if t.is_contiguous() or t.dim() < 3:
        return t.contiguous().numpy(), False
    stored = t.permute(_to_storage_order(t))
    if stored.is_contiguous():
        return stored.numpy(), True
    return t.contiguous().numpy(), False


def _numpy_in_layout(t, channels_last):
    t = t.detach()
    if channels_last:
        return t.permute(_to_storage_order(t)).contiguous().numpy()
    return t.contiguous().numpy()


def _tensor_from(array, channels_last):
    t = torch.from_numpy(array)
    return t.permute(_from_storage_order(t.dim())) if channels_last else t


def _vector(t):
    return None if t is None else t.detach().contiguous().numpy()


def _buffer(t):
    # Updated in place by the kernels: must be the buffer's own memory.
    return None if t is None else t.detach().numpy()


class BatchNormFunction(torch.autograd.Function):
    """Batch normalization as an autograd node running bnorm's kernels.

    apply(input, weight, bias, running_mean, running_var, training, momentum,
    eps, num_batches_tracked): training=True normalizes with the batch
    statistics and updates the running ones in place when given (momentum
    None needs num_batches_tracked, the batches seen including this one);
    training=False normalizes with the running statistics, which the gradient
    then treats as constants.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps,
                num_batches_tracked):
        for name, t in (("input", input), ("weight", weight), ("bias", bias),
                        ("running_mean", running_mean), ("running_var", running_var)):
            if t is not None:
                _check_tensor(name, t)
        x, channels_last = numpy_view(input)
        w, b = _vector(weight), _vector(bias)
        if training:
            y, mean, spread = _kernels.batch_norm_train(
                x, w, b, _buffer(running_mean), _buffer(running_var), momentum, eps,
                channels_last, num_batches_tracked=num_batches_tracked)
        else:
            y = _kernels.batch_norm(x, _vector(running_mean), _vector(running_var), w, b, False,
                                    momentum, eps, channels_last)
            # Copies: a later training step must not change this graph's gradient.
            mean, spread = np.array(_vector(running_mean)), np.array(_vector(running_var))
        ctx.save_for_backward(input, weight)
        ctx.x = x
        ctx.channels_last = channels_last
        ctx.training = training
        ctx.eps = eps
        ctx.mean, ctx.spread = mean, spread
        ctx.has_bias = bias is not None
        return _tensor_from(y, channels_last)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors  # checks that input was not modified in place
        dy = _numpy_in_layout(grad_output, ctx.channels_last)
        w = _vector(weight)
        if w is None and ctx.has_bias:
            # grad_bias comes with grad_weight: ask for both with gamma = 1.
            w = np.ones(ctx.mean.shape, ctx.x.dtype)
        if ctx.training:
            dx, dw, db = _kernels.batch_norm_backward(dy, ctx.x, w, ctx.mean, ctx.spread,
                                                      ctx.channels_last)
        else:
            dx, dw, db = _kernels.batch_norm_backward_eval(dy, ctx.x, w, ctx.mean, ctx.spread,
                                                           ctx.eps, ctx.channels_last)
        need = ctx.needs_input_grad
        grad_input = _tensor_from(dx, ctx.channels_last) if need[0] else None
        grad_weight = torch.from_numpy(dw) if need[1] and weight is not None else None
        grad_bias = torch.from_numpy(db) if need[2] and ctx.has_bias else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, num_batches_tracked=None):
    """torch.nn.functional.batch_norm computed by bnorm, with autograd.

    Same arguments and results as torch.nn.functional.batch_norm; running
    statistics are updated in place when training. momentum=None selects
    the cumulative moving average and needs num_batches_tracked (batches
    seen, this one included). Bad arguments raise ValueError and change
    nothing.
    """
    return BatchNormFunction.apply(input, weight, bias, running_mean, running_var, training,
                                   momentum, eps, num_batches_tracked)


class _BatchNorm(torch.nn.Module):
    """Shared by BatchNorm1d/2d/3d: parameters, buffers and forward."""

    # Version 2 added num_batches_tracked; older state_dicts lack it.
    _version = 2
    __constants__ = ["track_running_stats", "momentum", "eps", "num_features", "affine"]

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        like = {"device": device, "dtype": dtype}
        if affine:
            self.weight = torch.nn.Parameter(torch.empty(num_features, **like))
            self.bias = torch.nn.Parameter(torch.empty(num_features, **like))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **like))
            self.register_buffer("running_var", torch.ones(num_features, **like))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            torch.nn.init.ones_(self.weight)
            torch.nn.init.zeros_(self.bias)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def _check_input_dim(self, input):
        if input.dim() not in self._input_dims:
            expected = " or ".join(f"{d}D" for d in self._input_dims)
            raise ValueError(f"expected {expected} input (got {input.dim()}D input)")

    def forward(self, input):
        self._check_input_dim(input)
        # The same decisions as torch.nn.BatchNormXd: in training the running
        # statistics are updated when tracked; in eval they normalize when
        # they exist, else the batch statistics do.
        updates = self.training and self.track_running_stats
        counter = self.num_batches_tracked if updates else None
        momentum = self.momentum
        batches = None
        if counter is not None:
            batches = int(counter) + 1
        elif momentum is None:
            momentum = 0.0  # nothing to average over: as PyTorch, keep the statistics
        use_batch_stats = self.training or (self.running_mean is None
                                            and self.running_var is None)
        pass_stats = not self.training or self.track_running_stats
        y = BatchNormFunction.apply(input, self.weight, self.bias,
                                    self.running_mean if pass_stats else None,
                                    self.running_var if pass_stats else None,
                                    use_batch_stats, momentum, self.eps, batches)
        # Counted only once the batch went through, so a bad input changes nothing.
        if counter is not None:
            counter.add_(1)
        return y

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long, device=self.running_mean.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class BatchNorm1d(_BatchNorm):
    """Drop-in for torch.nn.BatchNorm1d: input (N, C) or (N, C, L)."""

    _input_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Drop-in for torch.nn.BatchNorm2d: input (N, C, H, W), contiguous or channels_last."""

    _input_dims = (4,)


class BatchNorm3d(_BatchNorm):
    """Drop-in for torch.nn.BatchNorm3d: input (N, C, D, H, W), also channels_last_3d."""

    _input_dims = (5,)
