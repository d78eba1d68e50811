"""SyncBatchNorm: batch norm over the global batch of a torch.distributed job, on the CPU.

torch.nn.SyncBatchNorm runs on GPUs only. This module takes its constructor
and convert_sync_batchnorm, and synchronizes over any torch.distributed
process group (gloo, or MPI where the torch build has it) with bnorm's
kernels (torch.ops.bnorm.sync_*, over bnorm/distributed.hpp):

- forward, per step: a pre-flight all_gather of 64 bytes per rank (channel
  count, dtype, layout, eps, momentum, batch size, local errors), so that a
  mismatch or a bad input raises the same error on every rank instead of
  leaving the others waiting; then one all_reduce of 2C float64 values,
  each rank's statistics as shifted sums (count (mean - K), M2 + count
  (mean - K)^2 with K the running mean, which every rank holds bitwise
  equal; zero when statistics are not tracked). Every rank derives the same
  global mean and variance from the same reduced bytes, so the running
  statistics stay bitwise identical across ranks.
- backward: one all_reduce of 2C float64 values (sum dy, sum dy * x_hat).
  The weight and bias gradients are each rank's own contribution, as
  torch.nn.SyncBatchNorm gives them: DistributedDataParallel then reduces
  them with the other parameters' gradients.

Ranks may hold different batch sizes, zero included. In eval mode (with
running statistics) nothing is exchanged. Without an initialized process
group, or in a group of one, it is bnorm's BatchNorm. Every rank of the
group must call forward (and backward) in the same order, as with any
collective.

Timeouts: a rank that does not enter a call (in eval mode while the others
train, one that skipped a forward, one that died) would leave the others
waiting. Every collective is posted with async_op=True and waited for with a
deadline: the module's `timeout` after the call started (seconds or a
timedelta), or, by default, the process group's own timeout
(init_process_group(..., timeout=...), 30 minutes unless set), which gloo
enforces on each collective. When it passes, each waiting rank raises
SyncTimeoutError naming the call, the group's size and the time waited. The
process group is then unusable (a collective was left half done): the job
must end or destroy and re-create it. BNORM_MPI_TIMEOUT_MS is the MPI
layer's setting and is not read here: a torch.distributed job already sets
one timeout for all its collectives (DDP's included) on the process group.
"""

import datetime
import time
from typing import Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor

from . import _ops  # noqa: F401  (registers torch.ops.bnorm)
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm, _batches_seen


class SyncTimeoutError(RuntimeError):
    """A collective of bnorm.torch.SyncBatchNorm waited past its deadline: some rank of
    the process group did not enter it. The process group cannot be used afterwards."""


def _seconds(timeout) -> Optional[float]:
    if timeout is None:
        return None
    seconds = (timeout.total_seconds() if isinstance(timeout, datetime.timedelta)
               else float(timeout))
    if not seconds > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    return seconds


class _Deadline:
    """The time one call (all its collectives together) may wait for the other ranks."""

    def __init__(self, call: str, group, timeout: Optional[float]):
        self.call, self.group, self.timeout = call, group, timeout
        self.start = time.monotonic()

    def wait(self, work) -> None:
        try:
            if self.timeout is None:
                work.wait()  # the process group's timeout (gloo raises when it passes)
            else:
                left = self.timeout - (time.monotonic() - self.start)
                work.wait(datetime.timedelta(seconds=max(left, 1e-3)))
        except RuntimeError as e:
            # gloo says "Timed out waiting ...", a wait with a timeout "Operation timed
            # out!"; anything else (a peer's closed connection) is not a timeout.
            if "timed out" not in str(e).lower():
                raise
            waited = time.monotonic() - self.start
            world = dist.get_world_size(self.group)
            if self.timeout is not None:
                limit = f"timeout {self.timeout:g} s"
            else:
                pg_timeout = getattr(getattr(self.group, "options", None), "_timeout", None)
                limit = ("the process group's timeout" +
                         (f" of {pg_timeout.total_seconds():g} s" if pg_timeout else ""))
            raise SyncTimeoutError(
                f"bnorm.torch.SyncBatchNorm.{self.call}: waited {waited:.2f} s ({limit}) for "
                f"the other ranks of a process group of size {world}; a rank did not enter "
                "the collective (eval mode while the others train, a skipped step or a dead "
                "process). The process group is unusable now: end the job or destroy and "
                "re-create the group.") from e


_DTYPE_CODES = {torch.float32: 1, torch.float64: 2, torch.bfloat16: 3, torch.float16: 4}
_PREFLIGHT = 8  # float64 values per rank


def _channels_last(input: Tensor) -> bool:
    if input.dim() < 3 or input.is_contiguous():
        return False
    order = (0, *range(2, input.dim()), 1)
    return input.permute(order).is_contiguous()


def _preflight(input, num_features, momentum, eps, group, deadline):
    """Checks this rank's arguments without raising, shares the verdicts and
    the settings with every rank (one all_gather), and raises the same error
    everywhere if anything is wrong. Returns the global count of values per
    channel and each rank's count."""
    error = None
    if input.dim() < 2:
        error = f"expected at least 2D input (got {input.dim()}D input)"
    elif input.size(1) != num_features:
        error = f"expected {num_features} channels, got input of sizes {list(input.shape)}"
    elif input.dtype not in _DTYPE_CODES:
        error = f"input must be float32, float64, bfloat16 or float16, got {input.dtype}"
    elif input.device.type != "cpu":
        error = f"input must be on the CPU, got {input.device}"
    values_per_channel = 0 if error else input.numel() // max(input.size(1), 1)
    mine = torch.tensor([0.0 if error else 1.0,
                         float(input.size(1)) if input.dim() >= 2 else -1.0,
                         float(_DTYPE_CODES.get(input.dtype, 0)),
                         float(_channels_last(input)) if input.numel() else -1.0,
                         eps, -1.0 if momentum is None else float(momentum),
                         float(values_per_channel), 0.0], dtype=torch.float64)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    deadline.wait(dist.all_gather(everyone, mine, group=group, async_op=True))
    table = torch.stack(everyone)
    name = "bnorm.torch.SyncBatchNorm"
    bad = [r for r in range(table.size(0)) if table[r, 0] == 0]
    if bad:
        detail = f" (this rank: {error})" if error else ""
        raise ValueError(f"{name}: invalid input on rank(s) {bad}{detail}")
    for column, what in ((1, "channel counts"), (2, "dtypes"), (4, "eps"), (5, "momentum")):
        if not torch.all(table[:, column] == table[0, column]):
            raise ValueError(f"{name}: {what} differ across ranks: "
                             f"{table[:, column].tolist()}")
    layouts = {v for v in table[:, 3].tolist() if v >= 0}
    if len(layouts) > 1:
        raise ValueError(f"{name}: memory formats differ across ranks (channels_last on some, "
                         f"contiguous on others): {table[:, 3].tolist()}")
    counts = [int(v) for v in table[:, 6].tolist()]
    total = sum(counts)
    if total < 2:
        raise ValueError("Expected more than 1 value per channel when training, got "
                         f"{total} over all ranks")
    return total, counts


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, momentum, batches, eps, group,
                num_features, timeout):
        deadline = _Deadline("forward", group, timeout)
        count, _ = _preflight(input, num_features, momentum, eps, group, deadline)
        c = input.size(1)
        n = input.numel() // c
        mean, m2 = torch.ops.bnorm.sync_local_moments(input)
        shift = (running_mean.detach().double() if running_mean is not None
                 else torch.zeros(c, dtype=torch.float64))
        d = mean - shift
        sums = torch.cat([n * d, m2 + n * d * d])
        deadline.wait(dist.all_reduce(sums, group=group, async_op=True))
        s1, s2 = sums[:c], sums[c:]
        global_mean = shift + s1 / count
        global_var = ((s2 - s1 * s1 / count) / count).clamp_min(0)
        y, save_mean, save_invstd = torch.ops.bnorm.sync_forward(
            input, weight, bias, global_mean, global_var, count, running_mean, running_var,
            momentum, batches, eps)
        ctx.save_for_backward(input, weight, save_mean, save_invstd)
        ctx.count, ctx.group, ctx.timeout = count, group, timeout
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, grad_output):
        deadline = _Deadline("backward", ctx.group, ctx.timeout)
        input, weight, save_mean, save_invstd = ctx.saved_tensors
        c = input.size(1)
        sum_dy, sum_dy_xhat = torch.ops.bnorm.sync_local_backward_sums(
            grad_output, input, save_mean, save_invstd)
        # This rank's own parameter gradients, before the exchange.
        grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_dy_xhat.to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(ctx.bias_dtype)
        # Every rank takes part, whether or not it needs grad_input.
        sums = torch.cat([sum_dy, sum_dy_xhat])
        deadline.wait(dist.all_reduce(sums, group=ctx.group, async_op=True))
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.bnorm.sync_backward(grad_output, input, weight, save_mean,
                                                       save_invstd, sums[:c], sums[c:],
                                                       ctx.count)
        return (grad_input, grad_weight, grad_bias) + (None,) * 8


class SyncBatchNorm(_BatchNorm):
    """torch.nn.SyncBatchNorm's constructor and semantics, on the CPU over torch.distributed.

    Input (N, C, *spatial) of any rank >= 2, contiguous or channels-last,
    float32, float64, bfloat16 or float16. See the module docstring for what
    is exchanged. timeout (seconds or a timedelta, > 0; the attribute may be
    changed later): how long one forward or backward may wait for the other
    ranks before raising SyncTimeoutError; None, the process group's timeout.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None,
                 timeout: Union[None, float, datetime.timedelta] = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype)
        self.process_group = process_group
        _seconds(timeout)  # a bad value fails here rather than at the first forward
        self.timeout = timeout

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError("expected at least 2D input (got {}D input)".format(input.dim()))

    def _group(self):
        if not (self.training or (self.running_mean is None and self.running_var is None)):
            return None  # eval with running statistics: nothing to share
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: Tensor) -> Tensor:
        group = self._group()
        if group is None:
            return super().forward(input)
        counter = self.num_batches_tracked
        batches, counts = _batches_seen(self.momentum, counter, self.training,
                                        self.track_running_stats)
        track = self.track_running_stats
        y = _SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.running_mean if track else None,
            self.running_var if track else None, self.momentum, batches, self.eps, group,
            self.num_features, _seconds(self.timeout))
        if counts and counter is not None:
            counter.add_(1)
        return y

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group=None, timeout=None):
        """module with every batch-norm layer (torch.nn's BatchNormXd and SyncBatchNorm,
        bnorm's BatchNormXd) replaced by bnorm's SyncBatchNorm over process_group (with
        that timeout), parameters (the same objects), buffers and training flag carried
        over."""
        out = module
        kinds = (torch.nn.modules.batchnorm._BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d)
        if isinstance(module, kinds) and not isinstance(module, cls):
            like = module.running_mean if module.running_mean is not None else module.weight
            factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group, timeout=timeout, **factory)
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group, timeout))
        return out
