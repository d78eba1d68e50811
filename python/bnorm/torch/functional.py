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
    batches = 0 if num_batches_tracked is None else num_batches_tracked
    return torch.ops.bnorm.batch_norm(input, weight, bias, running_mean, running_var, training,
                                      momentum, batches, eps)
