// Schemas of the fused batch norm, torch.ops.bnorm.fused_*: bnorm/fused.hpp
// as operators, y = act(bn(x) + residual). act: 0 identity, 1 relu,
// 2 leaky_relu (slope). abs_weight: InPlace-ABN's gamma_eff = |gamma| +
// weight_eps. bnorm.torch.BatchNormAct (python/bnorm/torch/fused.py) runs
// them inside its autograd function; they have CPU kernels only.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(bnorm, m) {
  // (y, save_mean, save_invstd); the running statistics updated in place.
  m.def(
      "fused_batch_norm_train(Tensor input, Tensor? residual, Tensor? weight, Tensor? bias, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, float momentum, float eps, int act, "
      "float slope, bool abs_weight, float weight_eps) -> (Tensor, Tensor, Tensor)");
  // y with the running statistics.
  m.def(
      "fused_batch_norm_eval(Tensor input, Tensor? residual, Tensor? weight, Tensor? bias, "
      "Tensor running_mean, Tensor running_var, float eps, int act, float slope, "
      "bool abs_weight, float weight_eps) -> Tensor");
  // (dx, dweight, dbias, dresidual) of the training forward; the mask is read
  // off `output`. from_output: x_hat recovered from output (input unused).
  m.def(
      "fused_batch_norm_backward(Tensor grad_out, Tensor output, Tensor? input, Tensor? weight, "
      "Tensor? bias, Tensor save_mean, Tensor save_invstd, int act, float slope, "
      "bool abs_weight, float weight_eps, bool from_output, bool[4] output_mask) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  // (weight', bias') of a convolution or linear layer [out, ...] followed by
  // an eval batch norm, folded in double.
  m.def(
      "fold_batch_norm(Tensor weight, Tensor? bias, Tensor? bn_weight, Tensor? bn_bias, "
      "Tensor running_mean, Tensor running_var, float eps) -> (Tensor, Tensor)");
}
