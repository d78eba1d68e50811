"""bnorm.torch: bnorm's batch normalization as native PyTorch operators.

The C++ operators ``torch.ops.bnorm.batch_norm`` (and its training, eval
and backward kernels) are registered with PyTorch's dispatcher, so autograd
(double backward included), TorchScript, tracing, the profiler and
functorch's batching see them like any ATen operator. On top of them:

- ``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d``: drop-ins for
  ``torch.nn.BatchNormXd`` (same constructor, parameters, buffers,
  state_dict, errors);
- ``batch_norm``: ``torch.nn.functional.batch_norm``'s signature;
- ``BatchRenorm1d/2d/3d`` (Batch Renormalization, with ``renorm_schedule``
  for the paper's rmax/dmax schedule) and ``GhostBatchNorm1d/2d/3d``
  (statistics per group of ``virtual_batch_size`` samples), in ``stats.py``;
- ``convert(module)``: every ``torch.nn.BatchNormXd`` in a model replaced by
  bnorm's, state and training flag carried over;
- ``SyncBatchNorm``: torch.nn.SyncBatchNorm on the CPU, over torch.distributed
  (gloo), with ``SyncBatchNorm.convert_sync_batchnorm``; a rank left waiting
  raises ``SyncTimeoutError`` after the timeout;
- an ONNX symbolic, so ``torch.onnx.export`` writes a standard
  ``BatchNormalization`` node for bnorm's op in eval mode.

``library_path`` is the shared library holding the operators; a C++
program that runs a TorchScript model with bnorm inside loads it with
``torch::jit`` after ``dlopen`` (or links it).
"""

from ._ops import library_path
from .convert import convert
from .functional import batch_norm
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .stats import (BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, GhostBatchNorm1d,
                    GhostBatchNorm2d, GhostBatchNorm3d, renorm_schedule)
from .sync import SyncBatchNorm, SyncTimeoutError
from .fused import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d, batch_norm_act, fold, fuse
from . import onnx as _onnx  # registers the ONNX symbolic

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "SyncTimeoutError",
           "batch_norm", "convert", "library_path", "BatchRenorm1d", "BatchRenorm2d",
           "BatchRenorm3d", "GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d",
           "renorm_schedule"]
