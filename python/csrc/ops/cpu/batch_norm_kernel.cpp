// CPU kernels of torch.ops.bnorm.*: tensors in, bnorm's kernels over their
// memory, tensors out (layouts and dtypes as tensors.h describes).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <bnorm/bnorm.hpp>
#include <cmath>
#include <vector>

#include "tensors.h"

namespace bnorm::ops {
namespace {

using namespace cpu;

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight_opt,
    const c10::optional<at::Tensor>& bias_opt, const c10::optional<at::Tensor>& running_mean_opt,
    const c10::optional<at::Tensor>& running_var_opt, c10::optional<double> momentum,
    int64_t num_batches_tracked, double eps) {
  constexpr const char* fn = "batch_norm_train";
  check_input(fn, input);
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, input);
  const at::Tensor bias = channel_vector(fn, "bias", bias_opt, input);
  const auto [running_mean, running_var] =
      running_stats(fn, running_mean_opt, running_var_opt, input);
  if (input.numel() == 0) return empty_batch_forward(input);
  const int64_t c = input.size(1);
  const int64_t m = input.numel() / c;
  TORCH_CHECK_VALUE(m > 1, "Expected more than 1 value per channel when training, got input size ",
                    sizes_str(input));

  const bool channels_last = is_channels_last(input);
  const at::Tensor x = in_layout(input, channels_last);
  at::Tensor y = empty_in_layout(x, channels_last);
  at::Tensor save_mean = at::empty({c}, stat_options(input));
  at::Tensor save_invstd = at::empty({c}, stat_options(input));
  const Shape shape = shape_of(x, channels_last);
  run_typed(input, [&]<class T>() {
    using P = param_t<T>;
    forward_training<T>(shape, data<T>(x), data<P>(weight), data<P>(bias), data<T>(y),
                        data<P>(save_mean), data<P>(save_invstd), data<P>(running_mean),
                        data<P>(running_var), options_of(eps, momentum, num_batches_tracked));
  });
  // A running statistic that was converted or packed: write the update back.
  write_back(running_mean_opt, running_mean);
  write_back(running_var_opt, running_var);
  return {y, save_mean, save_invstd};
}

at::Tensor batch_norm_eval_cpu(const at::Tensor& input, const c10::optional<at::Tensor>& weight_opt,
                               const c10::optional<at::Tensor>& bias_opt,
                               const at::Tensor& running_mean_in, const at::Tensor& running_var_in,
                               double eps) {
  constexpr const char* fn = "batch_norm_eval";
  check_input(fn, input);
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, input);
  const at::Tensor bias = channel_vector(fn, "bias", bias_opt, input);
  const at::Tensor running_mean = channel_vector(fn, "running_mean", running_mean_in, input);
  const at::Tensor running_var = channel_vector(fn, "running_var", running_var_in, input);
  if (input.numel() == 0) return at::empty_like(input);
  const bool channels_last = is_channels_last(input);
  const at::Tensor x = in_layout(input, channels_last);
  at::Tensor y = empty_in_layout(x, channels_last);
  const Shape shape = shape_of(x, channels_last);
  run_typed(input, [&]<class T>() {
    using P = param_t<T>;
    forward_inference<T>(shape, data<T>(x), data<P>(weight), data<P>(bias), data<P>(running_mean),
                         data<P>(running_var), data<T>(y), eps);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input,
    const c10::optional<at::Tensor>& weight_opt, const c10::optional<at::Tensor>& running_mean_opt,
    const c10::optional<at::Tensor>& running_var_opt,
    const c10::optional<at::Tensor>& save_mean_opt,
    const c10::optional<at::Tensor>& save_invstd_opt, bool train, double eps,
    std::array<bool, 3> output_mask) {
  constexpr const char* fn = "batch_norm_backward";
  check_input(fn, input);
  const bool channels_last = is_channels_last(input);
  const at::Tensor dy = like_input(fn, "grad_out", grad_out, input, channels_last);
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, input);
  const at::Tensor mean = channel_vector(fn, train ? "save_mean" : "running_mean",
                                         train ? save_mean_opt : running_mean_opt, input);
  const at::Tensor spread = channel_vector(fn, train ? "save_invstd" : "running_var",
                                           train ? save_invstd_opt : running_var_opt, input);
  TORCH_CHECK_VALUE(mean.defined() && spread.defined(), "bnorm.", fn,
                    train ? ": save_mean and save_invstd are required when train=True"
                          : ": running_mean and running_var are required when train=False");

  const int64_t c = input.size(1);
  at::Tensor dx, dweight, dbias;
  if (output_mask[0]) dx = empty_in_layout(input, channels_last);
  if (output_mask[1]) dweight = at::empty({c}, stat_options(input));
  if (output_mask[2]) dbias = at::empty({c}, stat_options(input));
  if (input.numel() == 0) {
    if (dweight.defined()) dweight.zero_();
    if (dbias.defined()) dbias.zero_();
    return {dx, as_parameter(dweight, weight_opt), as_parameter(dbias, weight_opt)};
  }
  const at::Tensor x = in_layout(input, channels_last);
  const Shape shape = shape_of(x, channels_last);
  run_typed(input, [&]<class T>() {
    using P = param_t<T>;
    if (train) {
      backward<T>(shape, data<T>(dy), data<T>(x), data<P>(weight), data<P>(mean), data<P>(spread),
                  data<T>(dx), data<P>(dweight), data<P>(dbias));
      return;
    }
    // Eval: the running statistics are constants.
    backward_inference<T>(shape, data<T>(dy), data<T>(x), data<P>(weight), data<P>(mean),
                          data<P>(spread), data<T>(dx), data<P>(dweight), data<P>(dbias), eps);
  });
  return {dx, as_parameter(dweight, weight_opt), as_parameter(dbias, weight_opt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(bnorm, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train_cpu);
  m.impl("batch_norm_eval", &batch_norm_eval_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
}

}  // namespace bnorm::ops
