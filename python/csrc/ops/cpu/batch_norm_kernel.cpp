// CPU kernels of torch.ops.bnorm.*: tensors in, bnorm's kernels over their
// memory, tensors out. No copies for contiguous and channels-last
// (channels_last, channels_last_3d, or any rank with C innermost) inputs;
// other strides are packed first, as ATen does.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <bnorm/bnorm.hpp>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace bnorm::ops {
namespace {

// Permutation that moves the channel dimension last: (0, 2, ..., d-1, 1).
std::vector<int64_t> channel_last_order(int64_t dim) {
  std::vector<int64_t> order{0};
  for (int64_t d = 2; d < dim; ++d) order.push_back(d);
  order.push_back(1);
  return order;
}

// Inverse of channel_last_order: (0, d-1, 1, ..., d-2).
std::vector<int64_t> channel_first_order(int64_t dim) {
  std::vector<int64_t> order{0, dim - 1};
  for (int64_t d = 1; d < dim - 1; ++d) order.push_back(d);
  return order;
}

bool is_channels_last(const at::Tensor& t) {
  return t.dim() >= 3 && !t.is_contiguous() &&
         t.permute(channel_last_order(t.dim())).is_contiguous();
}

// t in the given memory order (a no-op when it already is).
at::Tensor in_layout(const at::Tensor& t, bool channels_last) {
  if (!channels_last) return t.contiguous();
  if (is_channels_last(t)) return t;
  return t.permute(channel_last_order(t.dim())).contiguous().permute(channel_first_order(t.dim()));
}

at::Tensor empty_in_layout(const at::Tensor& like, bool channels_last) {
  if (!channels_last) return at::empty(like.sizes(), like.options());
  std::vector<int64_t> stored;
  for (int64_t d : channel_last_order(like.dim())) stored.push_back(like.size(d));
  return at::empty(stored, like.options()).permute(channel_first_order(like.dim()));
}

Shape shape_of(const at::Tensor& x, bool channels_last) {
  Shape shape;
  shape.n = x.size(0);
  shape.c = x.size(1);
  shape.s = 1;
  for (int64_t d = 2; d < x.dim(); ++d) shape.s *= x.size(d);
  shape.layout = channels_last ? Layout::NHWC : Layout::NCHW;
  return shape;
}

std::string sizes_str(const at::Tensor& t) {
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + "]";
}

void check_input(const char* fn, const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() >= 2, "bnorm.", fn,
                    ": input must have at least 2 dimensions (N, C, ...), got sizes ",
                    sizes_str(input));
  TORCH_CHECK_VALUE(input.device().is_cpu(), "bnorm.", fn, ": input must be on the CPU, got ",
                    input.device());
  const auto type = input.scalar_type();
  TORCH_CHECK_VALUE(type == at::kFloat || type == at::kDouble, "bnorm.", fn,
                    ": input must be float32 or float64, got ", type);
}

// A per-channel tensor read by the kernel (weight, bias, statistics): C
// values of the input's dtype on the CPU. Returns it contiguous, or an
// undefined tensor for None.
at::Tensor channel_vector(const char* fn, const char* name, const c10::optional<at::Tensor>& t,
                          const at::Tensor& input) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(t->device().is_cpu(), "bnorm.", fn, ": ", name, " must be on the CPU, got ",
                    t->device());
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == input.size(1), "bnorm.", fn, ": ", name,
                    " must have ", input.size(1), " elements (one per channel of input of sizes ",
                    sizes_str(input), "), got sizes ", sizes_str(*t));
  TORCH_CHECK_VALUE(t->scalar_type() == input.scalar_type(), "bnorm.", fn, ": ", name,
                    " must have input's dtype ", input.scalar_type(), ", got ", t->scalar_type());
  return t->contiguous();
}

template <class T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <class T>
T* mutable_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// bnorm's own argument errors (eps, momentum, ...) reach Python as ValueError.
template <class F>
void run(F&& kernel) {
  try {
    kernel();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

template <class F>
void dispatch_float(const at::Tensor& input, F&& f) {
  if (input.scalar_type() == at::kDouble)
    f(double{});
  else
    f(float{});
}

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
  const auto stat_options = input.options().memory_format(c10::nullopt);
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
  dispatch_float(input, [&](auto zero) {
    using T = decltype(zero);
    run([&] {
      forward_training<T>(shape, x.data_ptr<T>(), ptr<T>(weight), ptr<T>(bias), y.data_ptr<T>(),
                          save_mean.data_ptr<T>(), save_invstd.data_ptr<T>(),
                          mutable_ptr<T>(running_mean), mutable_ptr<T>(running_var), options);
    });
  });
  // A strided running statistic was packed: write the update back.
  if (have_mean && !running_mean.is_same(*running_mean_opt)) running_mean_opt->copy_(running_mean);
  if (have_var && !running_var.is_same(*running_var_opt)) running_var_opt->copy_(running_var);
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
  dispatch_float(input, [&](auto zero) {
    using T = decltype(zero);
    run([&] {
      forward_inference<T>(shape, x.data_ptr<T>(), ptr<T>(weight), ptr<T>(bias),
                           running_mean.data_ptr<T>(), running_var.data_ptr<T>(), y.data_ptr<T>(),
                           eps);
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
  const auto stat_options = input.options().memory_format(c10::nullopt);
  const bool channels_last = is_channels_last(input);
  at::Tensor dx, dweight, dbias;
  if (output_mask[0]) dx = empty_in_layout(input, channels_last);
  if (output_mask[1]) dweight = at::empty({c}, stat_options);
  if (output_mask[2]) dbias = at::empty({c}, stat_options);
  if (input.numel() == 0) {
    if (dweight.defined()) dweight.zero_();
    if (dbias.defined()) dbias.zero_();
    return {dx, dweight, dbias};
  }
  const at::Tensor x = in_layout(input, channels_last);
  const at::Tensor dy = in_layout(grad_out, channels_last);
  const Shape shape = shape_of(x, channels_last);
  dispatch_float(input, [&](auto zero) {
    using T = decltype(zero);
    run([&] {
      if (train) {
        backward<T>(shape, dy.data_ptr<T>(), x.data_ptr<T>(), ptr<T>(weight), mean.data_ptr<T>(),
                    spread.data_ptr<T>(), mutable_ptr<T>(dx), mutable_ptr<T>(dweight),
                    mutable_ptr<T>(dbias));
        return;
      }
      // Eval: the running statistics are constants, so this is the
      // frozen-moments gradient with invstd = 1/sqrt(running_var + eps).
      std::vector<T> invstd(static_cast<size_t>(c));
      const T* var = spread.data_ptr<T>();
      for (int64_t k = 0; k < c; ++k) invstd[size_t(k)] = T(1.0 / std::sqrt(double(var[k]) + eps));
      backward_frozen_moments<T>(shape, dy.data_ptr<T>(), x.data_ptr<T>(), ptr<T>(weight),
                                 mean.data_ptr<T>(), invstd.data(), mutable_ptr<T>(dx),
                                 mutable_ptr<T>(dweight), mutable_ptr<T>(dbias));
    });
  });
  return {dx, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bnorm, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train_cpu);
  m.impl("batch_norm_eval", &batch_norm_eval_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
}

}  // namespace bnorm::ops
