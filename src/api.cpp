// The public functions: validate everything, then run the CPU kernels.
#include <bnorm/bnorm.hpp>
#include <cmath>
#include <type_traits>
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
void forward_training(const Shape& shape, const T* x, const T* weight, const T* bias, T* y,
                      T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                      const Options& options) {
  constexpr const char* fn = "forward_training";
  detail::check_shape(fn, shape);
  if (shape.m() < 2)
    detail::fail(fn, "expected more than 1 value per channel in training, got n*s = " +
                         std::to_string(shape.m()));
  detail::check_eps(fn, options.eps);
  detail::check_not_null(fn, x, "x");
  detail::check_not_null(fn, y, "y");
  const double factor = detail::running_factor(fn, options, running_mean, running_var);
  const bool track = running_mean != nullptr;

  if constexpr (std::is_same_v<T, float>) {
    // One fused call: statistics, y, saved and running statistics.
    cpu::ForwardOutputs out;
    out.weight = weight;
    out.bias = bias;
    out.save_mean = save_mean;
    out.save_invstd = save_invstd;
    out.running_mean = running_mean;
    out.running_var = running_var;
    out.eps = options.eps;
    out.factor = factor;
    cpu::forward_training_f32(shape, x, y, out);
    return;
  }
  const int64_t c = shape.c;
  const double m = double(shape.m());
  std::vector<double> mean(static_cast<size_t>(c)), var(static_cast<size_t>(c)),
      scale(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
  cpu::moments(shape, x, mean.data(), var.data());
  for (int64_t k = 0; k < c; ++k) {
    const double invstd = 1.0 / std::sqrt(var[size_t(k)] + options.eps);
    scale[size_t(k)] = param(weight, k, 1.0) * invstd;
    shift[size_t(k)] = param(bias, k, 0.0);
  }
  cpu::normalize(shape, x, mean.data(), scale.data(), shift.data(), y);
  for (int64_t k = 0; k < c; ++k) {
    const double mu = mean[size_t(k)], v = var[size_t(k)];
    if (save_mean) save_mean[k] = T(mu);
    if (save_invstd) save_invstd[k] = T(1.0 / std::sqrt(v + options.eps));
    if (track) {
      running_mean[k] = T((1 - factor) * double(running_mean[k]) + factor * mu);
      running_var[k] = T((1 - factor) * double(running_var[k]) + factor * v * m / (m - 1));
    }
  }
}

template <class T>
void forward_inference(const Shape& shape, const T* x, const T* weight, const T* bias,
                       const T* running_mean, const T* running_var, T* y, double eps) {
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
                   const T* x, const T* weight, const T* mean_in, const T* invstd_in, T* dx,
                   T* dweight, T* dbias) {
  detail::check_shape(fn, shape);
  detail::check_not_null(fn, dy, "dy");
  detail::check_not_null(fn, x, "x");
  detail::check_not_null(fn, mean_in, through_moments ? "save_mean" : "mean");
  detail::check_not_null(fn, invstd_in, through_moments ? "save_invstd" : "invstd");
  if constexpr (std::is_same_v<T, float>) {
    if (!dx && !dweight && !dbias) return;
    cpu::BackwardOutputs out;
    out.weight = weight;
    out.mean = mean_in;
    out.invstd = invstd_in;
    out.dweight = dweight;
    out.dbias = dbias;
    out.through_moments = through_moments;
    cpu::backward_f32(shape, dy, x, dx, out);
    return;
  }
  const int64_t c = shape.c;
  const double m = double(shape.m());
  std::vector<double> mean(static_cast<size_t>(c)), sum_dy(static_cast<size_t>(c)),
      sum_dy_xmu(static_cast<size_t>(c)), a(static_cast<size_t>(c)), b(static_cast<size_t>(c)),
      cc(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k) mean[size_t(k)] = double(mean_in[k]);
  if (dweight || dbias || through_moments)
    cpu::backward_reduce(shape, dy, x, mean.data(), sum_dy.data(), sum_dy_xmu.data());
  for (int64_t k = 0; k < c; ++k) {
    const size_t kk = size_t(k);
    const double invstd = double(invstd_in[k]);
    const double sum_dy_xhat = sum_dy_xmu[kk] * invstd;
    if (dweight) dweight[k] = T(sum_dy_xhat);
    if (dbias) dbias[k] = T(sum_dy[kk]);
    // dx = g*invstd*dy - g*invstd^2*mean(dy*xhat)*(x - mean) - g*invstd*mean(dy)
    const double g_invstd = param(weight, k, 1.0) * invstd;
    a[kk] = g_invstd;
    b[kk] = through_moments ? -g_invstd * invstd * sum_dy_xhat / m : 0.0;
    cc[kk] = through_moments ? -g_invstd * sum_dy[kk] / m : 0.0;
  }
  if (dx) cpu::backward_dx(shape, dy, x, mean.data(), a.data(), b.data(), cc.data(), dx);
}

}  // namespace

template <class T>
void backward(const Shape& shape, const T* dy, const T* x, const T* weight, const T* save_mean,
              const T* save_invstd, T* dx, T* dweight, T* dbias) {
  backward_impl("backward", true, shape, dy, x, weight, save_mean, save_invstd, dx, dweight, dbias);
}

template <class T>
void backward_frozen_moments(const Shape& shape, const T* dy, const T* x, const T* weight,
                             const T* mean, const T* invstd, T* dx, T* dweight, T* dbias) {
  backward_impl("backward_frozen_moments", false, shape, dy, x, weight, mean, invstd, dx, dweight,
                dbias);
}

#define BNORM_INSTANTIATE(T)                                                                     \
  template void forward_training<T>(const Shape&, const T*, const T*, const T*, T*, T*, T*, T*,  \
                                    T*, const Options&);                                         \
  template void forward_inference<T>(const Shape&, const T*, const T*, const T*, const T*,       \
                                     const T*, T*, double);                                      \
  template void backward<T>(const Shape&, const T*, const T*, const T*, const T*, const T*, T*,  \
                            T*, T*);                                                             \
  template void backward_frozen_moments<T>(const Shape&, const T*, const T*, const T*, const T*, \
                                           const T*, T*, T*, T*);
BNORM_INSTANTIATE(float)
BNORM_INSTANTIATE(double)
#undef BNORM_INSTANTIATE

}  // namespace bnorm
