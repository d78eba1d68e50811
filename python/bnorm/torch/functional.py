"""torch.nn.functional.batch_norm computed by bnorm's operator."""

from typing import Optional

import torch
from torch import Tensor

from . import _ops  # noqa: F401  (registers torch.ops.bnorm)


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: Optional[float] = 0.1, eps: float = 1e-5, *,
               num_batches_tracked: Optional[int] = None) -> Tensor:
    """torch.nn.functional.batch_norm's arguments and results, on bnorm's kernels.

    In training, the running statistics (when given) are updated in place
    with weight ``momentum`` for this batch; ``momentum=None`` selects the
    cumulative average and needs ``num_batches_tracked`` (batches seen, this
    one included). Outside training, the running statistics normalize.
    Errors (sizes, dtypes, too few values per channel in training) raise
    ValueError before anything is written.
    """
    if momentum is None:
        if training and running_mean is not None:
            if num_batches_tracked is None or num_batches_tracked < 1:
                raise ValueError("bnorm.torch.batch_norm: momentum=None (cumulative average) "
                                 "needs num_batches_tracked >= 1, got "
                                 f"{num_batches_tracked}")
            factor = 1.0 / float(num_batches_tracked)
        else:
            factor = 0.0
    else:
        factor = float(momentum)
    return torch.ops.bnorm.batch_norm(input, weight, bias, running_mean, running_var, training,
                                      factor, eps)
