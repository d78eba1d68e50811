// From tensors to bnorm's kernels: layouts, argument checks and dtype
// dispatch shared by the CPU kernels of torch.ops.bnorm.*.
//
// Layouts: a contiguous tensor is NCHW; one whose channel dimension is
// innermost and dense (channels_last, channels_last_3d, or any rank) is
// NHWC; both are read in place. Other strides are packed, as ATen does.
// Dtypes: float32 and float64 with parameters of the same dtype; bfloat16
// and float16 activations with float32 parameters and statistics (bnorm's
// param_t), or with parameters of their own dtype, converted to float32 for
// the kernel as torch does.
#pragma once

#include <ATen/ATen.h>

#include <bnorm/bnorm.hpp>
#include <bnorm/fused.hpp>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace bnorm::ops::cpu {

// Permutation that moves the channel dimension last: (0, 2, ..., d-1, 1).
inline std::vector<int64_t> channel_last_order(int64_t dim) {
  std::vector<int64_t> order{0};
  for (int64_t d = 2; d < dim; ++d) order.push_back(d);
  order.push_back(1);
  return order;
}

// Inverse of channel_last_order: (0, d-1, 1, ..., d-2).
inline std::vector<int64_t> channel_first_order(int64_t dim) {
  std::vector<int64_t> order{0, dim - 1};
  for (int64_t d = 1; d < dim - 1; ++d) order.push_back(d);
  return order;
}

// Decided from the strides alone: a permuted view per call would cost a
// tensor allocation, a good part of a small layer's time.
inline bool is_channels_last(const at::Tensor& t) {
  if (t.dim() < 3 || t.is_contiguous()) return false;
  int64_t expected = 1;  // dense in the order C, last spatial dim, ..., first, N
  const int64_t rank = t.dim();
  auto dense = [&](int64_t d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
    return true;
  };
  if (!dense(1)) return false;
  for (int64_t d = rank - 1; d >= 2; --d)
    if (!dense(d)) return false;
  return dense(0);
}

// Strides of a dense channels-last tensor of the given sizes.
inline std::vector<int64_t> channels_last_strides(at::IntArrayRef sizes) {
  const int64_t rank = int64_t(sizes.size());
  std::vector<int64_t> strides(size_t(rank), 1);
  int64_t step = sizes[1];
  for (int64_t d = rank - 1; d >= 2; --d) {
    strides[size_t(d)] = step;
    step *= sizes[size_t(d)];
  }
  strides[0] = step;
  return strides;
}

// t in the given memory order (a no-op when it already is).
inline at::Tensor in_layout(const at::Tensor& t, bool channels_last) {
  if (!channels_last) return t.contiguous();
  if (is_channels_last(t)) return t;
  return t.permute(channel_last_order(t.dim())).contiguous().permute(channel_first_order(t.dim()));
}

inline at::Tensor empty_in_layout(const at::Tensor& like, bool channels_last) {
  if (!channels_last) return at::empty(like.sizes(), like.options());
  return at::empty_strided(like.sizes(), channels_last_strides(like.sizes()), like.options());
}

inline Shape shape_of(const at::Tensor& x, bool channels_last) {
  Shape shape;
  shape.n = x.size(0);
  shape.c = x.size(1);
  shape.s = 1;
  for (int64_t d = 2; d < x.dim(); ++d) shape.s *= x.size(d);
  shape.layout = channels_last ? Layout::NHWC : Layout::NCHW;
  return shape;
}

inline std::string sizes_str(const at::Tensor& t) {
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + "]";
}

inline bool is_half_width(at::ScalarType type) {
  return type == at::kBFloat16 || type == at::kHalf;
}

inline void check_input(const char* fn, const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() >= 2, "bnorm.", fn,
                    ": input must have at least 2 dimensions (N, C, ...), got sizes ",
                    sizes_str(input));
  TORCH_CHECK_VALUE(input.device().is_cpu(), "bnorm.", fn, ": input must be on the CPU, got ",
                    input.device());
  const auto type = input.scalar_type();
  TORCH_CHECK_VALUE(type == at::kFloat || type == at::kDouble || is_half_width(type), "bnorm.", fn,
                    ": input must be float32, float64, bfloat16 or float16, got ", type);
}

// The dtype of the per-channel values the kernel reads and writes.
inline at::ScalarType param_type(const at::Tensor& input) {
  return is_half_width(input.scalar_type()) ? at::kFloat : input.scalar_type();
}

// A per-channel tensor (weight, bias, statistics): C values on the CPU, of
// the input's dtype or, for 16-bit input, float32. Returned contiguous in
// param_type(input) (a converted copy where needed), or undefined for None.
inline at::Tensor channel_vector(const char* fn, const char* name,
                                 const c10::optional<at::Tensor>& t, const at::Tensor& input) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(t->device().is_cpu(), "bnorm.", fn, ": ", name, " must be on the CPU, got ",
                    t->device());
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == input.size(1), "bnorm.", fn, ": ", name,
                    " must have ", input.size(1), " elements (one per channel of input of sizes ",
                    sizes_str(input), "), got sizes ", sizes_str(*t));
  const auto want = param_type(input);
  TORCH_CHECK_VALUE(t->scalar_type() == input.scalar_type() || t->scalar_type() == want, "bnorm.",
                    fn, ": ", name, " must have input's dtype ", input.scalar_type(),
                    want != input.scalar_type() ? " or float32" : "", ", got ", t->scalar_type());
  return t->scalar_type() == want ? t->contiguous() : t->to(want).contiguous();
}

// A tensor of input's sizes and dtype (grad_out, residual, output), on the
// CPU, in the given layout; undefined for None.
inline at::Tensor like_input(const char* fn, const char* name, const c10::optional<at::Tensor>& t,
                             const at::Tensor& input, bool channels_last) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(t->sizes() == input.sizes(), "bnorm.", fn, ": ", name,
                    " must have input's sizes ", sizes_str(input), ", got ", sizes_str(*t));
  TORCH_CHECK_VALUE(t->scalar_type() == input.scalar_type(), "bnorm.", fn, ": ", name,
                    " must have input's dtype ", input.scalar_type(), ", got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->device().is_cpu(), "bnorm.", fn, ": ", name, " must be on the CPU, got ",
                    t->device());
  return in_layout(*t, channels_last);
}

// The running statistics of a training forward: both given or both None,
// each checked as channel_vector does (the kernel writes them in place: the
// caller's own tensors, or converted copies for write_back).
inline std::pair<at::Tensor, at::Tensor> running_stats(const char* fn,
                                                       const c10::optional<at::Tensor>& mean,
                                                       const c10::optional<at::Tensor>& var,
                                                       const at::Tensor& input) {
  const bool have_mean = mean.has_value() && mean->defined();
  const bool have_var = var.has_value() && var->defined();
  TORCH_CHECK_VALUE(have_mean == have_var, "bnorm.", fn,
                    ": running_mean and running_var must both be given or both None");
  return {channel_vector(fn, "running_mean", mean, input),
          channel_vector(fn, "running_var", var, input)};
}

// The dtype and device of the saved statistics and the parameter gradients.
inline at::TensorOptions stat_options(const at::Tensor& input) {
  return input.options().dtype(param_type(input));
}

// An empty batch, as torch: an empty output, zero saved statistics, and the
// running statistics left alone (there is nothing to average).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_batch_forward(const at::Tensor& input) {
  const int64_t c = input.size(1);
  return {at::empty_like(input), at::zeros({c}, stat_options(input)),
          at::zeros({c}, stat_options(input))};
}

// A parameter gradient in the weight's dtype (float32 or, for a model
// converted to 16 bits, the input's), as autograd requires.
inline at::Tensor as_parameter(const at::Tensor& grad, const c10::optional<at::Tensor>& weight) {
  const bool convert = grad.defined() && weight.has_value() && weight->defined() &&
                       weight->scalar_type() != grad.scalar_type();
  return convert ? grad.to(weight->scalar_type()) : grad;
}

// The operators' eps, momentum (None: the cumulative average) and
// num_batches_tracked (batches seen, this one included), as the core reads them.
inline Options options_of(double eps, c10::optional<double> momentum, int64_t num_batches_tracked) {
  Options options;
  options.eps = eps;
  options.momentum = momentum ? std::optional<double>(*momentum) : std::nullopt;
  options.num_batches_tracked = num_batches_tracked;
  return options;
}

// The core's Activation for an operator's act string; bnorm's error (which
// lists the names) as ValueError.
inline Activation activation_of(c10::string_view act) {
  try {
    return activation_from_name(std::string_view(act.data(), act.size()));
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

// Writes a kernel's result back to the caller's tensor when the kernel
// worked on a converted or packed copy of it.
inline void write_back(const c10::optional<at::Tensor>& original, const at::Tensor& computed) {
  if (original.has_value() && original->defined() && !computed.is_same(*original))
    original->copy_(computed);
}

template <class T>
T* data(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
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

// f(T{}) for the input's element type.
template <class F>
void dispatch(const at::Tensor& input, F&& f) {
  switch (input.scalar_type()) {
    case at::kDouble:
      f(double{});
      break;
    case at::kBFloat16:
      f(bfloat16{});
      break;
    case at::kHalf:
      f(float16{});
      break;
    default:
      f(float{});
  }
}

// kernel.template operator()<T>() for the input's element type, bnorm's
// argument errors as ValueError; kernels are written [&]<class T>() { ... }.
template <class F>
void run_typed(const at::Tensor& input, F&& kernel) {
  dispatch(input, [&](auto zero) { run([&] { kernel.template operator()<decltype(zero)>(); }); });
}

}  // namespace bnorm::ops::cpu
