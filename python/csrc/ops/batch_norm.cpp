// Schemas of torch.ops.bnorm.* and the C++ entry points that call them
// through the dispatcher.
#include "batch_norm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace bnorm::ops {

at::Tensor batch_norm(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                      const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& running_mean,
                      const c10::optional<at::Tensor>& running_var, bool training,
                      c10::optional<double> momentum, int64_t num_batches_tracked, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bnorm::batch_norm", "")
                       .typed<decltype(batch_norm)>();
  return op.call(input, weight, bias, running_mean, running_var, training, momentum,
                 num_batches_tracked, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, c10::optional<double> momentum,
    int64_t num_batches_tracked, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bnorm::batch_norm_train", "")
                       .typed<decltype(batch_norm_train)>();
  return op.call(input, weight, bias, running_mean, running_var, momentum, num_batches_tracked,
                 eps);
}

at::Tensor batch_norm_eval(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                           const at::Tensor& running_var, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bnorm::batch_norm_eval", "")
                       .typed<decltype(batch_norm_eval)>();
  return op.call(input, weight, bias, running_mean, running_var, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    const c10::optional<at::Tensor>& save_mean, const c10::optional<at::Tensor>& save_invstd,
    bool train, double eps, std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bnorm::batch_norm_backward", "")
                       .typed<decltype(batch_norm_backward)>();
  return op.call(grad_out, input, weight, running_mean, running_var, save_mean, save_invstd, train,
                 eps, output_mask);
}

namespace {

// The op users call: picks the training or the eval kernel. Being composite,
// autograd and tracing see the two kernels below it, each with its formula;
// a Python trace records this op itself, which the ONNX symbolic maps.
at::Tensor batch_norm_composite(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                                const c10::optional<at::Tensor>& bias,
                                const c10::optional<at::Tensor>& running_mean,
                                const c10::optional<at::Tensor>& running_var, bool training,
                                c10::optional<double> momentum, int64_t num_batches_tracked,
                                double eps) {
  if (training)
    return std::get<0>(batch_norm_train(input, weight, bias, running_mean, running_var, momentum,
                                        num_batches_tracked, eps));
  const bool have_mean = running_mean.has_value() && running_mean->defined();
  const bool have_var = running_var.has_value() && running_var->defined();
  TORCH_CHECK_VALUE(have_mean && have_var,
                    "bnorm.batch_norm: running_mean and running_var must be given when "
                    "training=False (got running_mean ",
                    have_mean ? "given" : "None", ", running_var ", have_var ? "given" : "None",
                    ")");
  return batch_norm_eval(input, weight, bias, *running_mean, *running_var, eps);
}

}  // namespace

TORCH_LIBRARY(bnorm, m) {
  // The running statistics are updated in place (alias annotations a!, b!),
  // so TorchScript and the tracer keep the mutation.
  m.def(
      "batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float? momentum, int num_batches_tracked, float "
      "eps) -> Tensor");
  m.def(
      "batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float? momentum, int num_batches_tracked, float eps) -> (Tensor, "
      "Tensor, Tensor)");
  m.def(
      "batch_norm_eval(Tensor input, Tensor? weight, Tensor? bias, Tensor running_mean, "
      "Tensor running_var, float eps) -> Tensor");
  m.def(
      "batch_norm_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? running_mean, "
      "Tensor? running_var, Tensor? save_mean, Tensor? save_invstd, bool train, float eps, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bnorm, CompositeImplicitAutograd, m) {
  m.impl("batch_norm", &batch_norm_composite);
}

}  // namespace bnorm::ops
