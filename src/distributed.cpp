// The split training passes of include/bnorm/distributed.hpp over the CPU
// kernels' double-parameter interface (src/cpu/kernels.hpp); the arithmetic
// (namespace impl, src/distributed_impl.hpp) is the MPI layer's as well.
#include <bnorm/distributed.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/kernels.hpp"
#include "distributed_impl.hpp"
#include "validate.hpp"

namespace bnorm::distributed {
namespace {

void check_data(const char* fn, const Shape& local, const void* p, const char* name) {
  if (local.numel() > 0) detail::check_not_null(fn, p, name);
}

void check_count(const char* fn, const Shape& local, int64_t count) {
  if (count < 2 || count < local.m())
    detail::fail(fn,
                 "count (values per channel in the global batch) must be >= 2 and >= the "
                 "local n*s = " +
                     std::to_string(local.m()) + ", got " + std::to_string(count));
}

double param(const auto* p, int64_t k, double fallback) {
  return p == nullptr ? fallback : double(p[k]);
}

}  // namespace

namespace impl {

template <class T>
void slice_moments(const Shape& local, const T* x, double* mean, double* m2) {
  const size_t c = size_t(local.c);
  if (local.numel() == 0) {
    for (size_t k = 0; k < c; ++k) mean[k] = m2[k] = 0;
    return;
  }
  cpu::moments(local, x, mean, m2);  // m2 holds the biased variance for now
  const double m = double(local.m());
  for (size_t k = 0; k < c; ++k) m2[k] *= m;
}

template <class T>
void normalize_with_moments(const Shape& local, const T* x, const param_t<T>* weight,
                            const param_t<T>* bias, const double* mean, const double* var,
                            int64_t count, T* y, param_t<T>* save_mean, param_t<T>* save_invstd,
                            param_t<T>* running_mean, param_t<T>* running_var, double factor,
                            const Options& options, const Renorm<T>& renorm) {
  using P = param_t<T>;
  const size_t c = size_t(local.c);
  const double m = double(count);
  std::vector<double> scale(c), shift(c);
  for (size_t k = 0; k < c; ++k) {
    const double invstd = detail::invstd_of(var[k], options.eps);
    double g = param(weight, int64_t(k), 1.0), b = param(bias, int64_t(k), 0.0);
    if (renorm.limits) {
      // From the running statistics before this step's update.
      const detail::RenormCorrection rd =
          detail::renorm_correction(double(running_mean[k]), double(running_var[k]), mean[k],
                                    var[k], options.eps, renorm.limits->rmax, renorm.limits->dmax);
      if (renorm.r) renorm.r[k] = P(rd.r);
      if (renorm.d) renorm.d[k] = P(rd.d);
      detail::fold_renorm(rd, g, b);
    }
    scale[k] = g * invstd;
    shift[k] = b;
    if (save_mean) save_mean[k] = P(mean[k]);
    if (save_invstd) save_invstd[k] = P(invstd);
    if (running_mean) {
      running_mean[k] = P(detail::running_mean_update(double(running_mean[k]), factor, mean[k]));
      running_var[k] = P(detail::running_var_update(double(running_var[k]), factor, var[k], m,
                                                    options.unbiased_running_var));
    }
  }
  if (local.numel() > 0) cpu::normalize(local, x, mean, scale.data(), shift.data(), y);
}

template <class T>
void slice_backward_sums(const Shape& local, const T* dy, const T* x, const param_t<T>* save_mean,
                         const param_t<T>* save_invstd, double* sum_dy, double* sum_dy_xhat) {
  const size_t c = size_t(local.c);
  if (local.numel() == 0) {
    for (size_t k = 0; k < c; ++k) sum_dy[k] = sum_dy_xhat[k] = 0;
    return;
  }
  std::vector<double> mean(c);
  for (size_t k = 0; k < c; ++k) mean[k] = double(save_mean[k]);
  cpu::backward_reduce(local, dy, x, mean.data(), sum_dy, sum_dy_xhat);
  for (size_t k = 0; k < c; ++k) sum_dy_xhat[k] *= double(save_invstd[k]);
}

template <class T>
void dx_from_sums(const Shape& local, const T* dy, const T* x, const param_t<T>* weight,
                  const param_t<T>* save_mean, const param_t<T>* save_invstd, const double* sum_dy,
                  const double* sum_dy_xhat, int64_t count, T* dx, const param_t<T>* r) {
  if (dx == nullptr || local.numel() == 0) return;
  // dx = a dy + b (x - mean) + c with a = g invstd,
  // b = -g invstd^2 sum_dy_xhat / count, c = -g invstd sum_dy / count.
  const size_t c = size_t(local.c);
  const double m = double(count);
  std::vector<double> mean(c), a(c), b(c), cc(c);
  for (size_t k = 0; k < c; ++k) {
    const double invstd = double(save_invstd[k]);
    double g = param(weight, int64_t(k), 1.0);
    if (r) g *= double(r[k]);  // Batch Renormalization: r is a constant
    const double g_invstd = g * invstd;
    mean[k] = double(save_mean[k]);
    a[k] = g_invstd;
    b[k] = -g_invstd * invstd * sum_dy_xhat[k] / m;
    cc[k] = -g_invstd * sum_dy[k] / m;
  }
  cpu::backward_dx(local, dy, x, mean.data(), a.data(), b.data(), cc.data(), dx);
}

}  // namespace impl

template <class T>
void local_moments(const Shape& local, const T* x, double* mean, double* m2) {
  constexpr const char* fn = "distributed::local_moments";
  detail::check_local_shape(fn, local);
  check_data(fn, local, x, "x");
  detail::check_not_null(fn, mean, "mean");
  detail::check_not_null(fn, m2, "m2");
  impl::slice_moments(local, x, mean, m2);
}

template <class T>
void forward_with_moments(const Shape& local, const T* x, const param_t<T>* weight,
                          const param_t<T>* bias, const double* mean, const double* var,
                          int64_t count, T* y, param_t<T>* save_mean, param_t<T>* save_invstd,
                          param_t<T>* running_mean, param_t<T>* running_var,
                          const Options& options) {
  constexpr const char* fn = "distributed::forward_with_moments";
  detail::check_local_shape(fn, local);
  check_count(fn, local, count);
  detail::check_eps(fn, options.eps);
  check_data(fn, local, x, "x");
  check_data(fn, local, y, "y");
  detail::check_not_null(fn, mean, "mean");
  detail::check_not_null(fn, var, "var");
  const double factor = detail::running_factor(fn, options, running_mean, running_var);
  for (int64_t k = 0; k < local.c; ++k)
    if (!(var[k] >= 0) && !std::isnan(var[k]))
      detail::fail(fn, "var must be >= 0, got " + std::to_string(var[k]) + " for channel " +
                           std::to_string(k));
  impl::normalize_with_moments(local, x, weight, bias, mean, var, count, y, save_mean, save_invstd,
                               running_mean, running_var, factor, options);
}

template <class T>
void local_backward_sums(const Shape& local, const T* dy, const T* x, const param_t<T>* save_mean,
                         const param_t<T>* save_invstd, double* sum_dy, double* sum_dy_xhat) {
  constexpr const char* fn = "distributed::local_backward_sums";
  detail::check_local_shape(fn, local);
  check_data(fn, local, dy, "dy");
  check_data(fn, local, x, "x");
  detail::check_not_null(fn, save_mean, "save_mean");
  detail::check_not_null(fn, save_invstd, "save_invstd");
  detail::check_not_null(fn, sum_dy, "sum_dy");
  detail::check_not_null(fn, sum_dy_xhat, "sum_dy_xhat");
  impl::slice_backward_sums(local, dy, x, save_mean, save_invstd, sum_dy, sum_dy_xhat);
}

template <class T>
void backward_with_sums(const Shape& local, const T* dy, const T* x, const param_t<T>* weight,
                        const param_t<T>* save_mean, const param_t<T>* save_invstd,
                        const double* sum_dy, const double* sum_dy_xhat, int64_t count, T* dx) {
  constexpr const char* fn = "distributed::backward_with_sums";
  detail::check_local_shape(fn, local);
  check_count(fn, local, count);
  check_data(fn, local, dy, "dy");
  check_data(fn, local, x, "x");
  check_data(fn, local, dx, "dx");
  detail::check_not_null(fn, save_mean, "save_mean");
  detail::check_not_null(fn, save_invstd, "save_invstd");
  detail::check_not_null(fn, sum_dy, "sum_dy");
  detail::check_not_null(fn, sum_dy_xhat, "sum_dy_xhat");
  impl::dx_from_sums(local, dy, x, weight, save_mean, save_invstd, sum_dy, sum_dy_xhat, count, dx);
}

#define BNORM_INSTANTIATE(T, ...)                                                                 \
  template void impl::slice_moments<T>(const Shape&, const T*, double*, double*);                 \
  template void impl::normalize_with_moments<T>(                                                  \
      const Shape&, const T*, const param_t<T>*, const param_t<T>*, const double*, const double*, \
      int64_t, T*, param_t<T>*, param_t<T>*, param_t<T>*, param_t<T>*, double, const Options&,    \
      const impl::Renorm<T>&);                                                                    \
  template void impl::slice_backward_sums<T>(const Shape&, const T*, const T*, const param_t<T>*, \
                                             const param_t<T>*, double*, double*);                \
  template void impl::dx_from_sums<T>(const Shape&, const T*, const T*, const param_t<T>*,        \
                                      const param_t<T>*, const param_t<T>*, const double*,        \
                                      const double*, int64_t, T*, const param_t<T>*);             \
  template void local_moments<T>(const Shape&, const T*, double*, double*);                       \
  template void forward_with_moments<T>(                                                          \
      const Shape&, const T*, const param_t<T>*, const param_t<T>*, const double*, const double*, \
      int64_t, T*, param_t<T>*, param_t<T>*, param_t<T>*, param_t<T>*, const Options&);           \
  template void local_backward_sums<T>(const Shape&, const T*, const T*, const param_t<T>*,       \
                                       const param_t<T>*, double*, double*);                      \
  template void backward_with_sums<T>(const Shape&, const T*, const T*, const param_t<T>*,        \
                                      const param_t<T>*, const param_t<T>*, const double*,        \
                                      const double*, int64_t, T*);
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm::distributed
