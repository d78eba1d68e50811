// Schemas of the fused batch norm, torch.ops.bnorm.fused_*, and the C++
// entry points that call them through the dispatcher (fused_batch_norm.h).
// The training and backward ops have autograd kernels in C++, so modules
// built on them (bnorm.torch.BatchNormAct) can be scripted.
#include "fused_batch_norm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "cpu/tensors.h"

namespace bnorm::ops {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_batch_norm_train(
    const at::Tensor& input, const c10::optional<at::Tensor>& residual,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    c10::optional<double> momentum, int64_t num_batches_tracked, double eps, c10::string_view act,
    double slope, bool abs_weight, double weight_eps, bool save_output) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bnorm::fused_batch_norm_train", "")
                       .typed<decltype(fused_batch_norm_train)>();
  return op.call(input, residual, weight, bias, running_mean, running_var, momentum,
                 num_batches_tracked, eps, act, slope, abs_weight, weight_eps, save_output);
}

at::Tensor fused_batch_norm_eval(const at::Tensor& input, const c10::optional<at::Tensor>& residual,
                                 const c10::optional<at::Tensor>& weight,
                                 const c10::optional<at::Tensor>& bias,
                                 const at::Tensor& running_mean, const at::Tensor& running_var,
                                 double eps, c10::string_view act, double slope, bool abs_weight,
                                 double weight_eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bnorm::fused_batch_norm_eval", "")
                       .typed<decltype(fused_batch_norm_eval)>();
  return op.call(input, residual, weight, bias, running_mean, running_var, eps, act, slope,
                 abs_weight, weight_eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_batch_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& output, const c10::optional<at::Tensor>& input,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, c10::string_view act, double slope,
    bool abs_weight, double weight_eps, bool from_output, std::array<bool, 4> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bnorm::fused_batch_norm_backward", "")
                       .typed<decltype(fused_batch_norm_backward)>();
  return op.call(grad_out, output, input, weight, bias, save_mean, save_invstd, act, slope,
                 abs_weight, weight_eps, from_output, output_mask);
}

namespace {

// bnorm::check_epilogue for a layer's settings, so that a module rejects
// them when it is built, with the core's message, as ValueError.
void check_epilogue_op(c10::string_view act, double slope, bool abs_weight, double weight_eps,
                       bool save_output, bool residual) {
  Epilogue e;
  e.act = cpu::activation_of(act);
  e.negative_slope = slope;
  e.abs_weight = abs_weight;
  e.weight_eps = weight_eps;
  cpu::run([&] { check_epilogue("BatchNormAct", e, save_output, residual); });
}

}  // namespace
}  // namespace bnorm::ops

TORCH_LIBRARY_FRAGMENT(bnorm, m) {
  // Raises ValueError when a fused layer's settings are invalid; save_output:
  // also what the backward from the output needs.
  m.def(
      "check_epilogue(str act, float slope, bool abs_weight, float weight_eps, bool save_output, "
      "bool residual) -> ()",
      &bnorm::ops::check_epilogue_op);
  // (y, save_mean, save_invstd); the running statistics updated in place.
  // save_output: backward from the output (autograd keeps y, not input).
  m.def(
      "fused_batch_norm_train(Tensor input, Tensor? residual, Tensor? weight, Tensor? bias, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, float? momentum, int "
      "num_batches_tracked, float eps, str act, "
      "float slope, bool abs_weight, float weight_eps, bool save_output=False) -> "
      "(Tensor, Tensor, Tensor)");
  // y with the running statistics.
  m.def(
      "fused_batch_norm_eval(Tensor input, Tensor? residual, Tensor? weight, Tensor? bias, "
      "Tensor running_mean, Tensor running_var, float eps, str act, float slope, "
      "bool abs_weight, float weight_eps) -> Tensor");
  // (dx, dweight, dbias, dresidual) of the training forward; the mask is read
  // off `output`. from_output: x_hat recovered from output (input unused).
  m.def(
      "fused_batch_norm_backward(Tensor grad_out, Tensor output, Tensor? input, Tensor? weight, "
      "Tensor? bias, Tensor save_mean, Tensor save_invstd, str act, float slope, "
      "bool abs_weight, float weight_eps, bool from_output, bool[4] output_mask) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  // (weight', bias') of a convolution or linear layer [out, ...] followed by
  // an eval batch norm, folded in double.
  m.def(
      "fold_batch_norm(Tensor weight, Tensor? bias, Tensor? bn_weight, Tensor? bn_bias, "
      "Tensor running_mean, Tensor running_var, float eps) -> (Tensor, Tensor)");
}
