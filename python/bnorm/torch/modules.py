"""BatchNorm1d/2d/3d: torch.nn.BatchNormXd's modules on bnorm's operator.

Same constructor, parameters and buffers (weight, bias, running_mean,
running_var, num_batches_tracked) as torch.nn.BatchNormXd, so state_dicts
move freely between the two; the forward is scriptable and traceable.
Unlike torch.nn.BatchNormXd, a forward that raises leaves
num_batches_tracked and the running statistics untouched.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _ops  # noqa: F401  (registers torch.ops.bnorm)


def _batches_seen(momentum: Optional[float], counter: Optional[Tensor], training: bool,
                  track_running_stats: bool) -> Tuple[int, bool]:
    """Whether this batch is counted (training with tracked statistics, as
    torch.nn.BatchNormXd decides), and the operators' num_batches_tracked: the
    batches seen with this one, which the core turns into the weight of the
    cumulative average when momentum is None (read only then, so the counter is
    not read otherwise)."""
    counts = training and track_running_stats and counter is not None
    batches = 0
    if counts and momentum is None and counter is not None:
        batches = int(counter) + 1
    return batches, counts


class _BatchNorm(torch.nn.Module):
    """Shared by BatchNorm1d/2d/3d: parameters, buffers and forward."""

    # Version 2 added num_batches_tracked; older state_dicts lack it.
    _version = 2
    __constants__ = ["track_running_stats", "momentum", "eps", "num_features", "affine"]
    num_features: int
    eps: float
    momentum: Optional[float]
    affine: bool
    track_running_stats: bool

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None,
                 dtype=None) -> None:
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
            self.running_mean: Optional[Tensor]
            self.running_var: Optional[Tensor]
            self.num_batches_tracked: Optional[Tensor]
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            torch.nn.init.ones_(self.weight)
            torch.nn.init.zeros_(self.bias)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        # The same decisions as torch.nn.BatchNormXd: in training the running
        # statistics are updated when tracked; in eval they normalize when
        # they exist, else the batch statistics do.
        counter = self.num_batches_tracked
        batches, counts = _batches_seen(self.momentum, counter, self.training,
                                        self.track_running_stats)
        use_batch_stats = self.training or (self.running_mean is None
                                            and self.running_var is None)
        pass_stats = not self.training or self.track_running_stats
        y = torch.ops.bnorm.batch_norm(input, self.weight, self.bias,
                                       self.running_mean if pass_stats else None,
                                       self.running_var if pass_stats else None,
                                       use_batch_stats, self.momentum, batches, self.eps)
        # Counted once the batch went through, so a bad input changes nothing.
        if counts and counter is not None:
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

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError("expected 2D or 3D input (got {}D input)".format(input.dim()))


class BatchNorm2d(_BatchNorm):
    """Drop-in for torch.nn.BatchNorm2d: input (N, C, H, W), contiguous or channels_last."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError("expected 4D input (got {}D input)".format(input.dim()))


class BatchNorm3d(_BatchNorm):
    """Drop-in for torch.nn.BatchNorm3d: input (N, C, D, H, W), also channels_last_3d."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError("expected 5D input (got {}D input)".format(input.dim()))
