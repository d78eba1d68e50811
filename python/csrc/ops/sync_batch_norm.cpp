// Schemas of the synchronized batch norm's passes, torch.ops.bnorm.sync_*:
// bnorm/distributed.hpp as operators. bnorm.torch.SyncBatchNorm runs them
// with torch.distributed's collectives in between (python/bnorm/torch/sync.py);
// they have CPU kernels only, called inside that autograd function.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(bnorm, m) {
  // Per channel over the local slice: (mean, M2), float64.
  m.def("sync_local_moments(Tensor input) -> (Tensor, Tensor)");
  // y of the local slice with the global batch's statistics (float64 mean and
  // biased var over `count` values per channel); (y, save_mean, save_invstd),
  // and the running statistics updated in place.
  m.def(
      "sync_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor mean, Tensor var, "
      "int count, Tensor(a!)? running_mean, Tensor(b!)? running_var, float? momentum, "
      "int num_batches_tracked, float eps) -> (Tensor, Tensor, Tensor)");
  // Per channel over the local slice: (sum dy, sum dy * x_hat), float64.
  m.def(
      "sync_local_backward_sums(Tensor grad_out, Tensor input, Tensor save_mean, "
      "Tensor save_invstd) -> (Tensor, Tensor)");
  // dx of the local slice from the global sums over `count` values per channel.
  m.def(
      "sync_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor save_mean, "
      "Tensor save_invstd, Tensor sum_dy, Tensor sum_dy_xhat, int count) -> Tensor");
}
