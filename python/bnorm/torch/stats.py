"""Batch Renormalization and ghost batch norm as torch modules on bnorm's operator.

Both are compositions around ``torch.ops.bnorm.batch_norm``: Batch
Renormalization's r and d are per-channel constants (stop-gradient), so its
training forward is batch norm with weight * r and weight * d + bias, and
autograd through that product gives exactly the paper's gradients (dweight
= r * sum dy * x_hat + d * sum dy). Ghost batch norm runs the operator on
consecutive groups of samples. No NumPy on the way.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _ops  # noqa: F401  (registers torch.ops.bnorm)


def renorm_schedule(step: int, hold: float = 5000, dmax_at: float = 25000,
                    rmax_at: float = 40000, rmax: float = 3.0,
                    dmax: float = 5.0) -> Tuple[float, float]:
    """(rmax, dmax) at a training step under the paper's schedule.

    Ioffe (2017), Section 4.1: rmax = 1, dmax = 0 (batch norm) for the first
    5,000 steps, then relaxed linearly so that dmax reaches 5 at 25,000 steps
    and rmax reaches 3 at 40,000. For a run of another length scale the three
    marks, e.g. by run_steps / 50,000. The same schedule as C++
    ``bnorm::RenormSchedule``.
    """
    def ramp(end: float) -> float:
        if step <= hold:
            return 0.0
        if step >= end:
            return 1.0
        return (step - hold) / (end - hold)
    return 1.0 + (rmax - 1.0) * ramp(rmax_at), dmax * ramp(dmax_at)


def _reduce_dims(input: Tensor):
    return [0] + list(range(2, input.dim()))


class _BatchRenorm(torch.nn.Module):
    """Shared by BatchRenorm1d/2d/3d. Parameters and buffers as
    torch.nn.BatchNormXd's (running statistics always tracked: r and d are
    defined by them); ``rmax`` and ``dmax`` are plain attributes that a
    training loop may change (see renorm_schedule)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.01,
                 affine: bool = True, rmax: float = 3.0, dmax: float = 5.0, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.rmax = rmax
        self.dmax = dmax
        like = {"device": device, "dtype": dtype}
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features, **like))
            self.bias = torch.nn.Parameter(torch.zeros(num_features, **like))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **like))
        self.register_buffer("running_var", torch.ones(num_features, **like))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long,
                                                                 device=device))

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, rmax={self.rmax}, dmax={self.dmax}")

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training:
            return torch.ops.bnorm.batch_norm(input, self.weight, self.bias, self.running_mean,
                                              self.running_var, False, None, 0, self.eps)
        if not (self.rmax >= 1 and self.rmax < float("inf")):
            raise ValueError(f"rmax must be finite and >= 1, got {self.rmax}")
        if not (self.dmax >= 0 and self.dmax < float("inf")):
            raise ValueError(f"dmax must be finite and >= 0, got {self.dmax}")
        with torch.no_grad():
            # r and d from the running statistics before this batch's update.
            stats_in = input.detach()
            if stats_in.dtype != self.running_var.dtype:  # 16-bit input: float statistics
                stats_in = stats_in.to(self.running_var.dtype)
            var_b, mean_b = torch.var_mean(stats_in, dim=_reduce_dims(input), unbiased=False)
            sigma = torch.sqrt(self.running_var + self.eps)
            r = torch.clamp(torch.sqrt(var_b + self.eps) / sigma, 1.0 / self.rmax, self.rmax)
            d = torch.clamp((mean_b - self.running_mean) / sigma, -self.dmax, self.dmax)
            r = r.to(self.running_var.dtype)
            d = d.to(self.running_var.dtype)
        if self.weight is not None:
            weight = self.weight * r
            bias = torch.where(d == 0, self.bias, torch.addcmul(self.bias, self.weight, d))
        else:
            weight, bias = r, d + 0.0  # gamma = 1, beta = 0; +0.0 turns -0 into 0
        y = torch.ops.bnorm.batch_norm(input, weight, bias, self.running_mean, self.running_var,
                                       True, float(self.momentum), 0, self.eps)
        self.num_batches_tracked.add_(1)
        # This step's r and d, for inspection (constants of the gradient).
        self.last_r, self.last_d = r, d
        return y


class BatchRenorm1d(_BatchRenorm):
    """Batch Renormalization (Ioffe, 2017) for (N, C) or (N, C, L) input."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError("expected 2D or 3D input (got {}D input)".format(input.dim()))


class BatchRenorm2d(_BatchRenorm):
    """Batch Renormalization (Ioffe, 2017) for (N, C, H, W) input, also channels_last."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError("expected 4D input (got {}D input)".format(input.dim()))


class BatchRenorm3d(_BatchRenorm):
    """Batch Renormalization (Ioffe, 2017) for (N, C, D, H, W) input."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError("expected 5D input (got {}D input)".format(input.dim()))


class _GhostBatchNorm(torch.nn.Module):
    """Shared by GhostBatchNorm1d/2d/3d: torch.nn.BatchNormXd's parameters and
    buffers; in training the batch is split into consecutive groups of
    ``virtual_batch_size`` samples (the last may be smaller but must hold more
    than one value per channel), each normalized with its own statistics, the
    running statistics updated once per group in order (num_batches_tracked
    counts groups). Eval mode is batch norm's."""

    def __init__(self, num_features: int, virtual_batch_size: int, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if virtual_batch_size < 2:
            raise ValueError(f"virtual_batch_size must be >= 2, got {virtual_batch_size}")
        self.num_features = num_features
        self.virtual_batch_size = virtual_batch_size
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        like = {"device": device, "dtype": dtype}
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features, **like))
            self.bias = torch.nn.Parameter(torch.zeros(num_features, **like))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **like))
            self.register_buffer("running_var", torch.ones(num_features, **like))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long,
                                                                     device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self):
        return (f"{self.num_features}, virtual_batch_size={self.virtual_batch_size}, "
                f"eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training:
            use_batch = self.running_mean is None
            return torch.ops.bnorm.batch_norm(input, self.weight, self.bias, self.running_mean,
                                              self.running_var, use_batch, None, 0, self.eps)
        n, vbs = input.shape[0], self.virtual_batch_size
        spatial = input[0, 0].numel() if input.dim() > 2 else 1
        last = n % vbs
        if last != 0 and last * spatial < 2:
            # Checked before any group runs, so nothing is half updated.
            raise ValueError(f"the last group holds {last} sample(s) of n = {n}: 1 value per "
                             f"channel, expected more than 1 (virtual_batch_size {vbs})")
        track = self.training and self.running_mean is not None
        counter = int(self.num_batches_tracked) if track else 0
        outputs = []
        for g, part in enumerate(torch.split(input, vbs, dim=0)):
            # Group g counts as batch counter + g + 1 (read with momentum None).
            outputs.append(torch.ops.bnorm.batch_norm(part, self.weight, self.bias,
                                                      self.running_mean, self.running_var, True,
                                                      self.momentum, counter + g + 1, self.eps))
        if track:
            self.num_batches_tracked.add_(len(outputs))
        return torch.cat(outputs, dim=0)


class GhostBatchNorm1d(_GhostBatchNorm):
    """Ghost batch norm (Hoffer, Hubara and Soudry, 2017) for (N, C) or (N, C, L) input."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError("expected 2D or 3D input (got {}D input)".format(input.dim()))


class GhostBatchNorm2d(_GhostBatchNorm):
    """Ghost batch norm (Hoffer, Hubara and Soudry, 2017) for (N, C, H, W) input."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError("expected 4D input (got {}D input)".format(input.dim()))


class GhostBatchNorm3d(_GhostBatchNorm):
    """Ghost batch norm (Hoffer, Hubara and Soudry, 2017) for (N, C, D, H, W) input."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError("expected 5D input (got {}D input)".format(input.dim()))
