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
    const c10::optional<at::Tensor>& running_var_opt, double momentum, double eps) {
  constexpr const char* fn = "batch_norm_train";
  check_input(fn, input);
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, input);
  const at::Tensor bias = channel_vector(fn, "bias", bias_opt, input);
  const bool have_mean = running_mean_opt.has_value() && running_mean_opt->defined();
  const bool have_var = running_var_opt.has_value() && running_var_opt->defined();
  TORCH_CHECK_VALUE(have_mean == have_var, "bnorm.", fn,
                    ": running_mean and running_var must both be given or both None");
  // Written in place: the caller's own tensors (or packed copies written back).
  const at::Tensor running_mean = channel_vector(fn, "running_mean", running_mean_opt, input);
  const at::Tensor running_var = channel_vector(fn, "running_var", running_var_opt, input);

  const int64_t c = input.size(1);
  const auto stat_options = input.options().dtype(param_type(input));
  if (input.numel() == 0) {
    // As torch: an empty batch gives an empty output and leaves the running
    // statistics alone (there is nothing to average).
    return {at::empty_like(input), at::zeros({c}, stat_options), at::zeros({c}, stat_options)};
  }
  const int64_t m = input.numel() / c;
  TORCH_CHECK_VALUE(m > 1, "Expected more than 1 value per channel when training, got input size ",
                    sizes_str(input));

  const bool channels_last = is_channels_last(input);
  const at::Tensor x = in_layout(input, channels_last);
  at::Tensor y = empty_in_layout(x, channels_last);
  at::Tensor save_mean = at::empty({c}, stat_options);
  at::Tensor save_invstd = at::empty({c}, stat_options);
  const Shape shape = shape_of(x, channels_last);
  Options options;
  options.eps = eps;
  options.momentum = momentum;
  dispatch(input, [&](auto zero) {
    using T = decltype(zero);
    using P = param_t<T>;
    run([&] {
      forward_training<T>(shape, data<T>(x), data<P>(weight), data<P>(bias), data<T>(y),
                          data<P>(save_mean), data<P>(save_invstd), data<P>(running_mean),
                          data<P>(running_var), options);
    });
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
  dispatch(input, [&](auto zero) {
    using T = decltype(zero);
    using P = param_t<T>;
    run([&] {
      forward_inference<T>(shape, data<T>(x), data<P>(weight), data<P>(bias), data<P>(running_mean),
                           data<P>(running_var), data<T>(y), eps);
    });
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
  TORCH_CHECK_VALUE(grad_out.sizes() == input.sizes(), "bnorm.", fn,
                    ": grad_out must have input's sizes ", sizes_str(input), ", got ",
                    sizes_str(grad_out));
  TORCH_CHECK_VALUE(grad_out.scalar_type() == input.scalar_type(), "bnorm.", fn,
                    ": grad_out must have input's dtype ", input.scalar_type(), ", got ",
                    grad_out.scalar_type());
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, input);
  const at::Tensor mean = channel_vector(fn, train ? "save_mean" : "running_mean",
                                         train ? save_mean_opt : running_mean_opt, input);
  const at::Tensor spread = channel_vector(fn, train ? "save_invstd" : "running_var",
                                           train ? save_invstd_opt : running_var_opt, input);
  TORCH_CHECK_VALUE(mean.defined() && spread.defined(), "bnorm.", fn,
                    train ? ": save_mean and save_invstd are required when train=True"
                          : ": running_mean and running_var are required when train=False");

  const int64_t c = input.size(1);
  const auto stat_options = input.options().dtype(param_type(input));
  const bool channels_last = is_channels_last(input);
  at::Tensor dx, dweight, dbias;
  if (output_mask[0]) dx = empty_in_layout(input, channels_last);
  if (output_mask[1]) dweight = at::empty({c}, stat_options);
  if (output_mask[2]) dbias = at::empty({c}, stat_options);
  // The parameter gradients take the weight's dtype (float32 or, for a
  // model converted to 16 bits, the input's), as autograd requires.
  auto as_parameter = [&](const at::Tensor& g) {
    const bool convert = g.defined() && weight_opt.has_value() && weight_opt->defined() &&
                         weight_opt->scalar_type() != g.scalar_type();
    return convert ? g.to(weight_opt->scalar_type()) : g;
  };
  if (input.numel() == 0) {
    if (dweight.defined()) dweight.zero_();
    if (dbias.defined()) dbias.zero_();
    return {dx, as_parameter(dweight), as_parameter(dbias)};
  }
  const at::Tensor x = in_layout(input, channels_last);
  const at::Tensor dy = in_layout(grad_out, channels_last);
  const Shape shape = shape_of(x, channels_last);
  dispatch(input, [&](auto zero) {
    using T = decltype(zero);
    using P = param_t<T>;
    run([&] {
      if (train) {
        backward<T>(shape, data<T>(dy), data<T>(x), data<P>(weight), data<P>(mean), data<P>(spread),
                    data<T>(dx), data<P>(dweight), data<P>(dbias));
        return;
      }
      // Eval: the running statistics are constants, so this is the
      // frozen-moments gradient with invstd = 1/sqrt(running_var + eps).
      std::vector<P> invstd(static_cast<size_t>(c));
      const P* var = data<P>(spread);
      for (int64_t k = 0; k < c; ++k) invstd[size_t(k)] = P(1.0 / std::sqrt(double(var[k]) + eps));
      backward_frozen_moments<T>(shape, data<T>(dy), data<T>(x), data<P>(weight), data<P>(mean),
                                 invstd.data(), data<T>(dx), data<P>(dweight), data<P>(dbias));
    });
  });
  return {dx, as_parameter(dweight), as_parameter(dbias)};
}

}  // namespace

TORCH_LIBRARY_IMPL(bnorm, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train_cpu);
  m.impl("batch_norm_eval", &batch_norm_eval_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
}

}  // namespace bnorm::ops
