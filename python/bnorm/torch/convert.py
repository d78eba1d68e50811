"""convert(module): torch.nn.BatchNormXd layers replaced by bnorm's."""

import torch

from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

_REPLACEMENTS = {torch.nn.BatchNorm1d: BatchNorm1d, torch.nn.BatchNorm2d: BatchNorm2d,
                 torch.nn.BatchNorm3d: BatchNorm3d}


def convert(module: torch.nn.Module) -> torch.nn.Module:
    """Returns module with every torch.nn.BatchNorm1d/2d/3d replaced by bnorm's.

    Like torch.nn.SyncBatchNorm.convert_sync_batchnorm: the new layers take
    over the old ones' parameters (the same Parameter objects, so their
    requires_grad and any optimizer holding them carry over), buffers and
    training flag; a module that is itself a batch-norm layer is returned
    replaced. Only those exact classes are replaced (not subclasses such as
    torch.nn.SyncBatchNorm or lazy modules).
    """
    out = module
    cls = _REPLACEMENTS.get(type(module))
    if cls is not None:
        like = module.running_mean if module.running_mean is not None else module.weight
        factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
        out = cls(module.num_features, module.eps, module.momentum, module.affine,
                  module.track_running_stats, **factory)
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
        out.add_module(name, convert(child))
    return out
