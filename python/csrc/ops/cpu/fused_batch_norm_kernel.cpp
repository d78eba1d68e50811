// CPU kernels of torch.ops.bnorm.fused_* and fold_batch_norm: tensors in,
// bnorm/fused.hpp over their memory, tensors out (layouts and dtypes as
// tensors.h describes; residual and grad_out follow the input's layout). An
// empty batch (N = 0) gives empty outputs and leaves the running statistics
// alone, as torch.ops.bnorm.batch_norm does; bnorm/fused.hpp itself, like
// bnorm.hpp, requires n >= 1.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <bnorm/fused.hpp>

#include "tensors.h"

namespace bnorm::ops {
namespace {

using namespace cpu;

Epilogue epilogue_of(c10::string_view act, double slope, bool abs_weight, double weight_eps) {
  Epilogue e;
  e.act = activation_of(act);
  e.negative_slope = slope;
  e.abs_weight = abs_weight;
  e.weight_eps = weight_eps;
  return e;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_train_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& residual_opt,
    const c10::optional<at::Tensor>& weight_opt, const c10::optional<at::Tensor>& bias_opt,
    const c10::optional<at::Tensor>& running_mean_opt,
    const c10::optional<at::Tensor>& running_var_opt, c10::optional<double> momentum,
    int64_t num_batches_tracked, double eps, c10::string_view act, double slope, bool abs_weight,
    double weight_eps, bool save_output) {
  constexpr const char* fn = "fused_batch_norm_train";
  check_input(fn, input);
  const Epilogue e = epilogue_of(act, slope, abs_weight, weight_eps);
  // save_output: the backward will recover x_hat from y; what that needs is
  // checked now, before anything is written.
  const bool residual = residual_opt.has_value() && residual_opt->defined();
  if (save_output) run([&] { check_epilogue(fn, e, true, residual); });
  const bool channels_last = is_channels_last(input);
  const at::Tensor x = in_layout(input, channels_last);
  const at::Tensor r = like_input(fn, "residual", residual_opt, input, channels_last);
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, input);
  const at::Tensor bias = channel_vector(fn, "bias", bias_opt, input);
  const auto [running_mean, running_var] =
      running_stats(fn, running_mean_opt, running_var_opt, input);
  if (input.numel() == 0) return empty_batch_forward(input);
  at::Tensor y = empty_in_layout(x, channels_last);
  at::Tensor save_mean = at::empty({input.size(1)}, stat_options(input));
  at::Tensor save_invstd = at::empty({input.size(1)}, stat_options(input));
  const Shape shape = shape_of(x, channels_last);
  run_typed(input, [&]<class T>() {
    using P = param_t<T>;
    fused_forward_training<T>(shape, data<T>(x), data<T>(r), data<P>(weight), data<P>(bias),
                              data<T>(y), data<P>(save_mean), data<P>(save_invstd),
                              data<P>(running_mean), data<P>(running_var),
                              options_of(eps, momentum, num_batches_tracked), e);
  });
  write_back(running_mean_opt, running_mean);
  write_back(running_var_opt, running_var);
  return {y, save_mean, save_invstd};
}

at::Tensor fused_eval_cpu(const at::Tensor& input, const c10::optional<at::Tensor>& residual_opt,
                          const c10::optional<at::Tensor>& weight_opt,
                          const c10::optional<at::Tensor>& bias_opt,
                          const at::Tensor& running_mean_in, const at::Tensor& running_var_in,
                          double eps, c10::string_view act, double slope, bool abs_weight,
                          double weight_eps) {
  constexpr const char* fn = "fused_batch_norm_eval";
  check_input(fn, input);
  const Epilogue e = epilogue_of(act, slope, abs_weight, weight_eps);
  const bool channels_last = is_channels_last(input);
  const at::Tensor x = in_layout(input, channels_last);
  const at::Tensor r = like_input(fn, "residual", residual_opt, input, channels_last);
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, input);
  const at::Tensor bias = channel_vector(fn, "bias", bias_opt, input);
  const at::Tensor running_mean = channel_vector(fn, "running_mean", running_mean_in, input);
  const at::Tensor running_var = channel_vector(fn, "running_var", running_var_in, input);
  if (input.numel() == 0) return at::empty_like(input);
  at::Tensor y = empty_in_layout(x, channels_last);
  const Shape shape = shape_of(x, channels_last);
  run_typed(input, [&]<class T>() {
    using P = param_t<T>;
    fused_forward_inference<T>(shape, data<T>(x), data<T>(r), data<P>(weight), data<P>(bias),
                               data<P>(running_mean), data<P>(running_var), data<T>(y), eps, e);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& output,
    const c10::optional<at::Tensor>& input_opt, const c10::optional<at::Tensor>& weight_opt,
    const c10::optional<at::Tensor>& bias_opt, const at::Tensor& save_mean_in,
    const at::Tensor& save_invstd_in, c10::string_view act, double slope, bool abs_weight,
    double weight_eps, bool from_output, std::array<bool, 4> mask) {
  constexpr const char* fn = "fused_batch_norm_backward";
  check_input(fn, output);
  const Epilogue e = epilogue_of(act, slope, abs_weight, weight_eps);
  const bool channels_last = is_channels_last(output);
  const at::Tensor y = in_layout(output, channels_last);
  const at::Tensor dy = like_input(fn, "grad_out", grad_out, output, channels_last);
  const at::Tensor x = like_input(fn, "input", input_opt, output, channels_last);
  TORCH_CHECK_VALUE(from_output || x.defined(), "bnorm.", fn,
                    ": input is required unless from_output");
  const at::Tensor weight = channel_vector(fn, "weight", weight_opt, output);
  const at::Tensor bias = channel_vector(fn, "bias", bias_opt, output);
  const at::Tensor mean = channel_vector(fn, "save_mean", save_mean_in, output);
  const at::Tensor invstd = channel_vector(fn, "save_invstd", save_invstd_in, output);
  const int64_t c = output.size(1);
  at::Tensor dx, dweight, dbias, dresidual;
  if (mask[0]) dx = empty_in_layout(y, channels_last);
  if (mask[1]) dweight = at::empty({c}, stat_options(output));
  if (mask[2]) dbias = at::empty({c}, stat_options(output));
  if (mask[3]) dresidual = empty_in_layout(y, channels_last);
  if (output.numel() == 0) {
    // An empty batch: empty dx and dresidual, and sums over nothing.
    if (dweight.defined()) dweight.zero_();
    if (dbias.defined()) dbias.zero_();
    return {dx, as_parameter(dweight, weight_opt), as_parameter(dbias, weight_opt), dresidual};
  }
  const Shape shape = shape_of(y, channels_last);
  run_typed(output, [&]<class T>() {
    using P = param_t<T>;
    if (from_output) {
      fused_backward_from_output<T>(shape, data<T>(dy), data<T>(y), data<P>(weight), data<P>(bias),
                                    data<P>(invstd), data<T>(dx), data<P>(dweight), data<P>(dbias),
                                    e);
      // dresidual = dz: there is no residual in this mode, but the mask is
      // the same; asked for only by tests.
      if (dresidual.defined())
        fused_backward<T>(shape, data<T>(dy), data<T>(y), data<T>(y), data<P>(weight),
                          data<P>(mean), data<P>(invstd), nullptr, nullptr, nullptr,
                          data<T>(dresidual), e);
    } else {
      fused_backward<T>(shape, data<T>(dy), data<T>(y), data<T>(x), data<P>(weight), data<P>(mean),
                        data<P>(invstd), data<T>(dx), data<P>(dweight), data<P>(dbias),
                        data<T>(dresidual), e);
    }
  });
  return {dx, as_parameter(dweight, weight_opt), as_parameter(dbias, weight_opt), dresidual};
}

std::tuple<at::Tensor, at::Tensor> fold_cpu(const at::Tensor& weight_in,
                                            const c10::optional<at::Tensor>& bias_opt,
                                            const c10::optional<at::Tensor>& bn_weight_opt,
                                            const c10::optional<at::Tensor>& bn_bias_opt,
                                            const at::Tensor& running_mean_in,
                                            const at::Tensor& running_var_in, double eps) {
  constexpr const char* fn = "fold_batch_norm";
  TORCH_CHECK_VALUE(weight_in.dim() >= 1 && weight_in.size(0) >= 1, "bnorm.", fn,
                    ": weight must be [out_channels, ...], got sizes ", sizes_str(weight_in));
  const at::Tensor w = weight_in.contiguous();
  const int64_t out = w.size(0), fan_in = w.numel() / out;
  // channel_vector checks C values against size(1) of its `input`: a
  // [1, out] stand-in of the weight's dtype.
  const at::Tensor like = at::empty({1, out}, w.options());
  check_input(fn, like);
  const at::Tensor bn_weight = channel_vector(fn, "bn_weight", bn_weight_opt, like);
  const at::Tensor bn_bias = channel_vector(fn, "bn_bias", bn_bias_opt, like);
  const at::Tensor rm = channel_vector(fn, "running_mean", running_mean_in, like);
  const at::Tensor rv = channel_vector(fn, "running_var", running_var_in, like);
  at::Tensor b;
  if (bias_opt.has_value() && bias_opt->defined()) {
    TORCH_CHECK_VALUE(bias_opt->dim() == 1 && bias_opt->size(0) == out, "bnorm.", fn,
                      ": bias must have ", out, " elements, got sizes ", sizes_str(*bias_opt));
    b = bias_opt->to(w.scalar_type()).contiguous();
  }
  at::Tensor w_out = at::empty_like(w), b_out = at::empty({out}, w.options());
  run_typed(w, [&]<class T>() {
    using P = param_t<T>;
    fold_batch_norm<T>(out, fan_in, data<T>(w), data<T>(b), data<P>(bn_weight), data<P>(bn_bias),
                       data<P>(rm), data<P>(rv), eps, data<T>(w_out), data<T>(b_out));
  });
  return {w_out, b_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(bnorm, CPU, m) {
  m.impl("fused_batch_norm_train", &fused_train_cpu);
  m.impl("fused_batch_norm_eval", &fused_eval_cpu);
  m.impl("fused_batch_norm_backward", &fused_backward_cpu);
  m.impl("fold_batch_norm", &fold_cpu);
}

}  // namespace bnorm::ops
