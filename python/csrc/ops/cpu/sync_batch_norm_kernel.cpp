// CPU kernels of torch.ops.bnorm.sync_*: bnorm/distributed.hpp over tensors.
// A local slice may be empty (N = 0).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <bnorm/distributed.hpp>

#include "tensors.h"

namespace bnorm::ops {
namespace {

using namespace cpu;

// float64 per-channel values (the statistics and sums exchanged).
at::Tensor float64_channels(const char* fn, const char* name, const at::Tensor& t,
                            const at::Tensor& input) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == input.size(1) && t.scalar_type() == at::kDouble,
                    "bnorm.", fn, ": ", name, " must be float64 with ", input.size(1),
                    " elements, got ", t.scalar_type(), " of sizes ", sizes_str(t));
  return t.contiguous();
}

std::tuple<at::Tensor, at::Tensor> sync_local_moments_cpu(const at::Tensor& input) {
  constexpr const char* fn = "sync_local_moments";
  check_input(fn, input);
  const bool channels_last = is_channels_last(input);
  const at::Tensor x = in_layout(input, channels_last);
  const auto options = input.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({input.size(1)}, options), m2 = at::empty({input.size(1)}, options);
  run_typed(input, [&]<class T>() {
    distributed::local_moments<T>(shape_of(x, channels_last), data<T>(x), data<double>(mean),
                                  data<double>(m2));
  });
  return {mean, m2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sync_forward_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight_opt,
    const c10::optional<at::Tensor>& bias_opt, const at::Tensor& mean_in, const at::Tensor& var_in,
    int64_t count, const c10::optional<at::Tensor>& running_mean_opt,
    const c10::optional<at::Tensor>& running_var_opt, c10::optional<double> momentum,
    int64_t num_batches_tracked, double eps) {
  constexpr const char* fn = "sync_forward";
  check_input(fn, input);
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, input);
  const at::Tensor bias = channel_vector(fn, "bias", bias_opt, input);
  const at::Tensor running_mean = channel_vector(fn, "running_mean", running_mean_opt, input);
  const at::Tensor running_var = channel_vector(fn, "running_var", running_var_opt, input);
  const at::Tensor mean = float64_channels(fn, "mean", mean_in, input);
  const at::Tensor var = float64_channels(fn, "var", var_in, input);
  const bool channels_last = is_channels_last(input);
  const at::Tensor x = in_layout(input, channels_last);
  at::Tensor y = empty_in_layout(x, channels_last);
  const auto stat_options = input.options().dtype(param_type(input));
  at::Tensor save_mean = at::empty({input.size(1)}, stat_options);
  at::Tensor save_invstd = at::empty({input.size(1)}, stat_options);
  const Options options = options_of(eps, momentum, num_batches_tracked);
  run_typed(input, [&]<class T>() {
    using P = param_t<T>;
    distributed::forward_with_moments<T>(
        shape_of(x, channels_last), data<T>(x), data<P>(weight), data<P>(bias), data<double>(mean),
        data<double>(var), count, data<T>(y), data<P>(save_mean), data<P>(save_invstd),
        data<P>(running_mean), data<P>(running_var), options);
  });
  write_back(running_mean_opt, running_mean);
  write_back(running_var_opt, running_var);
  return {y, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor> sync_local_backward_sums_cpu(const at::Tensor& grad_out,
                                                                const at::Tensor& input,
                                                                const at::Tensor& save_mean_in,
                                                                const at::Tensor& save_invstd_in) {
  constexpr const char* fn = "sync_local_backward_sums";
  check_input(fn, input);
  TORCH_CHECK_VALUE(
      grad_out.sizes() == input.sizes() && grad_out.scalar_type() == input.scalar_type(), "bnorm.",
      fn, ": grad_out must have input's sizes and dtype");
  const at::Tensor save_mean = channel_vector(fn, "save_mean", save_mean_in, input);
  const at::Tensor save_invstd = channel_vector(fn, "save_invstd", save_invstd_in, input);
  const bool channels_last = is_channels_last(input);
  const at::Tensor x = in_layout(input, channels_last);
  const at::Tensor dy = in_layout(grad_out, channels_last);
  const auto options = input.options().dtype(at::kDouble);
  at::Tensor sum_dy = at::empty({input.size(1)}, options);
  at::Tensor sum_dy_xhat = at::empty({input.size(1)}, options);
  run_typed(input, [&]<class T>() {
    using P = param_t<T>;
    distributed::local_backward_sums<T>(shape_of(x, channels_last), data<T>(dy), data<T>(x),
                                        data<P>(save_mean), data<P>(save_invstd),
                                        data<double>(sum_dy), data<double>(sum_dy_xhat));
  });
  return {sum_dy, sum_dy_xhat};
}

at::Tensor sync_backward_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                             const c10::optional<at::Tensor>& weight_opt,
                             const at::Tensor& save_mean_in, const at::Tensor& save_invstd_in,
                             const at::Tensor& sum_dy_in, const at::Tensor& sum_dy_xhat_in,
                             int64_t count) {
  constexpr const char* fn = "sync_backward";
  check_input(fn, input);
  TORCH_CHECK_VALUE(
      grad_out.sizes() == input.sizes() && grad_out.scalar_type() == input.scalar_type(), "bnorm.",
      fn, ": grad_out must have input's sizes and dtype");
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, input);
  const at::Tensor save_mean = channel_vector(fn, "save_mean", save_mean_in, input);
  const at::Tensor save_invstd = channel_vector(fn, "save_invstd", save_invstd_in, input);
  const at::Tensor sum_dy = float64_channels(fn, "sum_dy", sum_dy_in, input);
  const at::Tensor sum_dy_xhat = float64_channels(fn, "sum_dy_xhat", sum_dy_xhat_in, input);
  const bool channels_last = is_channels_last(input);
  const at::Tensor x = in_layout(input, channels_last);
  const at::Tensor dy = in_layout(grad_out, channels_last);
  at::Tensor dx = empty_in_layout(x, channels_last);
  run_typed(input, [&]<class T>() {
    using P = param_t<T>;
    distributed::backward_with_sums<T>(
        shape_of(x, channels_last), data<T>(dy), data<T>(x), data<P>(weight), data<P>(save_mean),
        data<P>(save_invstd), data<double>(sum_dy), data<double>(sum_dy_xhat), count, data<T>(dx));
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(bnorm, CPU, m) {
  m.impl("sync_local_moments", &sync_local_moments_cpu);
  m.impl("sync_forward", &sync_forward_cpu);
  m.impl("sync_local_backward_sums", &sync_local_backward_sums_cpu);
  m.impl("sync_backward", &sync_backward_cpu);
}

}  // namespace bnorm::ops
