// The public functions: validate everything, then run the CPU kernels.
#include <bnorm/bnorm.hpp>
#include <cmath>
#include <vector>

#include "cpu/fast.hpp"
#include "cpu/kernels.hpp"
#include "validate.hpp"

namespace bnorm {
namespace {

double param(const auto* p, int64_t k, double fallback) {
  return p == nullptr ? fallback : double(p[k]);
}

}  // namespace

template <class T>
void forward_training(const Shape& shape, const T* x, const param_t<T>* weight,
                      const param_t<T>* bias, T* y, param_t<T>* save_mean, param_t<T>* save_invstd,
                      param_t<T>* running_mean, param_t<T>* running_var, const Options& options) {
  constexpr const char* fn = "forward_training";
  detail::check_shape(fn, shape);
  if (shape.m() < 2)
    detail::fail(fn, "expected more than 1 value per channel in training, got n*s = " +
                         std::to_string(shape.m()));
  detail::check_eps(fn, options.eps);
  detail::check_not_null(fn, x, "x");
  detail::check_not_null(fn, y, "y");
  const double factor = detail::running_factor(fn, options, running_mean, running_var);
  // One fused call: statistics, y, saved and running statistics.
  cpu::ForwardOutputs<param_t<T>> out;
  out.weight = weight;
  out.bias = bias;
  out.save_mean = save_mean;
  out.save_invstd = save_invstd;
  out.running_mean = running_mean;
  out.running_var = running_var;
  out.eps = options.eps;
  out.factor = factor;
  cpu::forward_training_fast(shape, x, y, out);
}

template <class T>
void forward_inference(const Shape& shape, const T* x, const param_t<T>* weight,
                       const param_t<T>* bias, const param_t<T>* running_mean,
                       const param_t<T>* running_var, T* y, double eps) {
  constexpr const char* fn = "forward_inference";
  detail::check_shape(fn, shape);
  detail::check_eps(fn, eps);
  detail::check_not_null(fn, x, "x");
  detail::check_not_null(fn, running_mean, "running_mean");
  detail::check_not_null(fn, running_var, "running_var");
  detail::check_not_null(fn, y, "y");
  const int64_t c = shape.c;
  std::vector<double> mean(static_cast<size_t>(c)), scale(static_cast<size_t>(c)),
      shift(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k) {
    mean[size_t(k)] = double(running_mean[k]);
    scale[size_t(k)] = param(weight, k, 1.0) / std::sqrt(double(running_var[k]) + eps);
    shift[size_t(k)] = param(bias, k, 0.0);
  }
  cpu::normalize(shape, x, mean.data(), scale.data(), shift.data(), y);
}

namespace {

// Shared by both backward flavours; through_moments selects the true
// gradient (through mean and variance) or the frozen-moments one.
template <class T>
void backward_impl(const char* fn, bool through_moments, const Shape& shape, const T* dy,
                   const T* x, const param_t<T>* weight, const param_t<T>* mean_in,
                   const param_t<T>* invstd_in, T* dx, param_t<T>* dweight, param_t<T>* dbias) {
  detail::check_shape(fn, shape);
  detail::check_not_null(fn, dy, "dy");
  detail::check_not_null(fn, x, "x");
  detail::check_not_null(fn, mean_in, through_moments ? "save_mean" : "mean");
  detail::check_not_null(fn, invstd_in, through_moments ? "save_invstd" : "invstd");
  if (!dx && !dweight && !dbias) return;
  cpu::BackwardOutputs<param_t<T>> out;
  out.weight = weight;
  out.mean = mean_in;
  out.invstd = invstd_in;
  out.dweight = dweight;
  out.dbias = dbias;
  out.through_moments = through_moments;
  cpu::backward_fast(shape, dy, x, dx, out);
}

}  // namespace

template <class T>
void backward(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
              const param_t<T>* save_mean, const param_t<T>* save_invstd, T* dx,
              param_t<T>* dweight, param_t<T>* dbias) {
  backward_impl("backward", true, shape, dy, x, weight, save_mean, save_invstd, dx, dweight, dbias);
}

template <class T>
void backward_frozen_moments(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
                             const param_t<T>* mean, const param_t<T>* invstd, T* dx,
                             param_t<T>* dweight, param_t<T>* dbias) {
  backward_impl("backward_frozen_moments", false, shape, dy, x, weight, mean, invstd, dx, dweight,
                dbias);
}

#define BNORM_INSTANTIATE(T)                                                                       \
  template void forward_training<T>(const Shape&, const T*, const param_t<T>*, const param_t<T>*,  \
                                    T*, param_t<T>*, param_t<T>*, param_t<T>*, param_t<T>*,        \
                                    const Options&);                                               \
  template void forward_inference<T>(const Shape&, const T*, const param_t<T>*, const param_t<T>*, \
                                     const param_t<T>*, const param_t<T>*, T*, double);            \
  template void backward<T>(const Shape&, const T*, const T*, const param_t<T>*,                   \
                            const param_t<T>*, const param_t<T>*, T*, param_t<T>*, param_t<T>*);   \
  template void backward_frozen_moments<T>(const Shape&, const T*, const T*, const param_t<T>*,    \
                                           const param_t<T>*, const param_t<T>*, T*, param_t<T>*,  \
                                           param_t<T>*);
BNORM_INSTANTIATE(float)
BNORM_INSTANTIATE(double)
BNORM_INSTANTIATE(bfloat16)
BNORM_INSTANTIATE(float16)
#undef BNORM_INSTANTIATE

}  // namespace bnorm
