// The public functions: validate everything, then run the CPU kernels.
#include <bnorm/bnorm.hpp>
#include <cmath>
#include <vector>

#include "cpu/kernels.hpp"
#include "validate.hpp"

namespace bnorm {
namespace {

double param(const auto* p, int64_t k, double fallback) {
  return p == nullptr ? fallback : double(p[k]);
}

}  // namespace

namespace {

// Batch Renormalization's part of a training forward (null for batch norm).
template <class T>
struct RenormArgs {
  RenormLimits limits;
  param_t<T>* r = nullptr;
  param_t<T>* d = nullptr;
};

// The training forward once every argument is valid; factor as
// check_training returned it. One fused call: statistics, y, saved and
// running statistics (and Batch Renormalization's r and d).
template <class T>
void forward_training_unchecked(const Shape& shape, const T* x, const param_t<T>* weight,
                                const param_t<T>* bias, T* y, param_t<T>* save_mean,
                                param_t<T>* save_invstd, param_t<T>* running_mean,
                                param_t<T>* running_var, const Options& options, double factor,
                                const RenormArgs<T>* renorm) {
  auto out = cpu::forward_outputs(weight, bias, save_mean, save_invstd, running_mean, running_var,
                                  options, factor);
  if (renorm) {
    out.renorm = true;
    out.rmax = renorm->limits.rmax;
    out.dmax = renorm->limits.dmax;
    out.r_out = renorm->r;
    out.d_out = renorm->d;
  }
  cpu::forward_training_fast(shape, x, y, out);
}

}  // namespace

template <class T>
void forward_training(const Shape& shape, const T* x, const param_t<T>* weight,
                      const param_t<T>* bias, T* y, param_t<T>* save_mean, param_t<T>* save_invstd,
                      param_t<T>* running_mean, param_t<T>* running_var, const Options& options) {
  const double factor =
      detail::check_training("forward_training", shape, x, y, running_mean, running_var, options);
  forward_training_unchecked<T>(shape, x, weight, bias, y, save_mean, save_invstd, running_mean,
                                running_var, options, factor, nullptr);
}

template <class T>
void batch_renorm_forward_training(const Shape& shape, const T* x, const param_t<T>* weight,
                                   const param_t<T>* bias, T* y, param_t<T>* save_mean,
                                   param_t<T>* save_invstd, param_t<T>* r, param_t<T>* d,
                                   param_t<T>* running_mean, param_t<T>* running_var,
                                   const RenormLimits& limits, const Options& options) {
  constexpr const char* fn = "batch_renorm_forward_training";
  const double factor = detail::check_training(fn, shape, x, y, running_mean, running_var, options);
  detail::check_renorm(fn, limits, running_mean);
  const RenormArgs<T> renorm{limits, r, d};
  forward_training_unchecked<T>(shape, x, weight, bias, y, save_mean, save_invstd, running_mean,
                                running_var, options, factor, &renorm);
}

int64_t ghost_groups(int64_t n, int64_t virtual_batch_size) {
  if (virtual_batch_size < 1 || n < 1) return 0;
  return n / virtual_batch_size + (n % virtual_batch_size != 0 ? 1 : 0);
}

template <class T>
void ghost_forward_training(const Shape& shape, int64_t virtual_batch_size, const T* x,
                            const param_t<T>* weight, const param_t<T>* bias, T* y,
                            param_t<T>* save_mean, param_t<T>* save_invstd,
                            param_t<T>* running_mean, param_t<T>* running_var,
                            const Options& options) {
  constexpr const char* fn = "ghost_forward_training";
  detail::check_shape(fn, shape);
  detail::check_ghost(fn, shape, virtual_batch_size);
  const int64_t groups = ghost_groups(shape.n, virtual_batch_size);
  // Every group's checks and factor before the first group writes anything.
  std::vector<double> factors;
  for (int64_t g = 0; g < groups; ++g) {
    Options group_options = options;
    if (!options.momentum) group_options.num_batches_tracked = options.num_batches_tracked + g;
    const Shape part = detail::ghost_group(shape, virtual_batch_size, g);
    factors.push_back(
        detail::check_training(fn, part, x, y, running_mean, running_var, group_options));
  }
  const int64_t c = shape.c;
  for (int64_t g = 0; g < groups; ++g) {
    const Shape part = detail::ghost_group(shape, virtual_batch_size, g);
    const int64_t offset = g * virtual_batch_size * c * shape.s;
    forward_training_unchecked<T>(part, x + offset, weight, bias, y + offset,
                                  save_mean ? save_mean + g * c : nullptr,
                                  save_invstd ? save_invstd + g * c : nullptr, running_mean,
                                  running_var, options, factors[size_t(g)], nullptr);
  }
}

template <class T>
void forward_inference(const Shape& shape, const T* x, const param_t<T>* weight,
                       const param_t<T>* bias, const param_t<T>* running_mean,
                       const param_t<T>* running_var, T* y, double eps) {
  constexpr const char* fn = "forward_inference";
  detail::check_inference(fn, shape, eps, x, running_mean, running_var, y);
  const int64_t c = shape.c;
  std::vector<double> mean(static_cast<size_t>(c)), scale(static_cast<size_t>(c)),
      shift(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k) {
    mean[size_t(k)] = double(running_mean[k]);
    scale[size_t(k)] = param(weight, k, 1.0) / detail::stddev_of(double(running_var[k]), eps);
    shift[size_t(k)] = param(bias, k, 0.0);
  }
  cpu::normalize(shape, x, mean.data(), scale.data(), shift.data(), y);
}

namespace {

template <class T>
void backward_checks(const char* fn, const Shape& shape, const T* dy, const T* x,
                     const param_t<T>* mean_in, const char* mean_name, const param_t<T>* spread_in,
                     const char* spread_name) {
  detail::check_shape(fn, shape);
  detail::check_not_null(fn, dy, "dy");
  detail::check_not_null(fn, x, "x");
  detail::check_not_null(fn, mean_in, mean_name);
  detail::check_not_null(fn, spread_in, spread_name);
}

// Shared by every backward; through_moments selects the true gradient
// (through mean and variance) or the frozen-moments one; r, d: Batch
// Renormalization's constants, or null for batch norm.
template <class T>
void backward_unchecked(bool through_moments, const Shape& shape, const T* dy, const T* x,
                        const param_t<T>* weight, const param_t<T>* mean_in,
                        const param_t<T>* invstd_in, const param_t<T>* r, const param_t<T>* d,
                        T* dx, param_t<T>* dweight, param_t<T>* dbias) {
  if (!dx && !dweight && !dbias) return;
  cpu::BackwardOutputs<param_t<T>> out;
  out.weight = weight;
  out.mean = mean_in;
  out.invstd = invstd_in;
  out.dweight = dweight;
  out.dbias = dbias;
  out.through_moments = through_moments;
  out.renorm_r = r;
  out.renorm_d = d;
  cpu::backward_fast(shape, dy, x, dx, out);
}

}  // namespace

template <class T>
void backward(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
              const param_t<T>* save_mean, const param_t<T>* save_invstd, T* dx,
              param_t<T>* dweight, param_t<T>* dbias) {
  backward_checks("backward", shape, dy, x, save_mean, "save_mean", save_invstd, "save_invstd");
  backward_unchecked<T>(true, shape, dy, x, weight, save_mean, save_invstd, nullptr, nullptr, dx,
                        dweight, dbias);
}

template <class T>
void backward_frozen_moments(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
                             const param_t<T>* mean, const param_t<T>* invstd, T* dx,
                             param_t<T>* dweight, param_t<T>* dbias) {
  backward_checks("backward_frozen_moments", shape, dy, x, mean, "mean", invstd, "invstd");
  backward_unchecked<T>(false, shape, dy, x, weight, mean, invstd, nullptr, nullptr, dx, dweight,
                        dbias);
}

template <class T>
void backward_inference(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
                        const param_t<T>* running_mean, const param_t<T>* running_var, T* dx,
                        param_t<T>* dweight, param_t<T>* dbias, double eps) {
  constexpr const char* fn = "backward_inference";
  backward_checks(fn, shape, dy, x, running_mean, "running_mean", running_var, "running_var");
  detail::check_eps(fn, eps);
  std::vector<param_t<T>> invstd(static_cast<size_t>(shape.c));
  for (int64_t k = 0; k < shape.c; ++k)
    invstd[size_t(k)] = param_t<T>(detail::invstd_of(double(running_var[k]), eps));
  backward_unchecked<T>(false, shape, dy, x, weight, running_mean, invstd.data(), nullptr, nullptr,
                        dx, dweight, dbias);
}

template <class T>
void batch_renorm_backward(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
                           const param_t<T>* save_mean, const param_t<T>* save_invstd,
                           const param_t<T>* r, const param_t<T>* d, T* dx, param_t<T>* dweight,
                           param_t<T>* dbias) {
  constexpr const char* fn = "batch_renorm_backward";
  backward_checks(fn, shape, dy, x, save_mean, "save_mean", save_invstd, "save_invstd");
  detail::check_not_null(fn, r, "r");
  detail::check_not_null(fn, d, "d");
  backward_unchecked<T>(true, shape, dy, x, weight, save_mean, save_invstd, r, d, dx, dweight,
                        dbias);
}

template <class T>
void ghost_backward(const Shape& shape, int64_t virtual_batch_size, const T* dy, const T* x,
                    const param_t<T>* weight, const param_t<T>* save_mean,
                    const param_t<T>* save_invstd, T* dx, param_t<T>* dweight, param_t<T>* dbias) {
  constexpr const char* fn = "ghost_backward";
  backward_checks(fn, shape, dy, x, save_mean, "save_mean", save_invstd, "save_invstd");
  detail::check_ghost(fn, shape, virtual_batch_size);
  using P = param_t<T>;
  const int64_t groups = ghost_groups(shape.n, virtual_batch_size), c = shape.c;
  // gamma and beta are shared by the groups: their gradients are the sums of
  // the groups' gradients, accumulated in double in group order.
  std::vector<P> part_dweight(dweight ? size_t(c) : 0), part_dbias(dbias ? size_t(c) : 0);
  std::vector<double> sum_dweight(size_t(c), 0.0), sum_dbias(size_t(c), 0.0);
  for (int64_t g = 0; g < groups; ++g) {
    const Shape part = detail::ghost_group(shape, virtual_batch_size, g);
    const int64_t offset = g * virtual_batch_size * c * shape.s;
    backward_unchecked<T>(true, part, dy + offset, x + offset, weight, save_mean + g * c,
                          save_invstd + g * c, nullptr, nullptr, dx ? dx + offset : nullptr,
                          dweight ? part_dweight.data() : nullptr,
                          dbias ? part_dbias.data() : nullptr);
    for (int64_t k = 0; k < c; ++k) {
      if (dweight) sum_dweight[size_t(k)] += double(part_dweight[size_t(k)]);
      if (dbias) sum_dbias[size_t(k)] += double(part_dbias[size_t(k)]);
    }
  }
  for (int64_t k = 0; k < c; ++k) {
    if (dweight) dweight[k] = P(sum_dweight[size_t(k)]);
    if (dbias) dbias[k] = P(sum_dbias[size_t(k)]);
  }
}

#define BNORM_INSTANTIATE(T, ...)                                                                  \
  template void forward_training<T>(const Shape&, const T*, const param_t<T>*, const param_t<T>*,  \
                                    T*, param_t<T>*, param_t<T>*, param_t<T>*, param_t<T>*,        \
                                    const Options&);                                               \
  template void forward_inference<T>(const Shape&, const T*, const param_t<T>*, const param_t<T>*, \
                                     const param_t<T>*, const param_t<T>*, T*, double);            \
  template void backward<T>(const Shape&, const T*, const T*, const param_t<T>*,                   \
                            const param_t<T>*, const param_t<T>*, T*, param_t<T>*, param_t<T>*);   \
  template void backward_frozen_moments<T>(const Shape&, const T*, const T*, const param_t<T>*,    \
                                           const param_t<T>*, const param_t<T>*, T*, param_t<T>*,  \
                                           param_t<T>*);                                           \
  template void backward_inference<T>(const Shape&, const T*, const T*, const param_t<T>*,         \
                                      const param_t<T>*, const param_t<T>*, T*, param_t<T>*,       \
                                      param_t<T>*, double);                                        \
  template void batch_renorm_forward_training<T>(                                                  \
      const Shape&, const T*, const param_t<T>*, const param_t<T>*, T*, param_t<T>*, param_t<T>*,  \
      param_t<T>*, param_t<T>*, param_t<T>*, param_t<T>*, const RenormLimits&, const Options&);    \
  template void batch_renorm_backward<T>(const Shape&, const T*, const T*, const param_t<T>*,      \
                                         const param_t<T>*, const param_t<T>*, const param_t<T>*,  \
                                         const param_t<T>*, T*, param_t<T>*, param_t<T>*);         \
  template void ghost_forward_training<T>(const Shape&, int64_t, const T*, const param_t<T>*,      \
                                          const param_t<T>*, T*, param_t<T>*, param_t<T>*,         \
                                          param_t<T>*, param_t<T>*, const Options&);               \
  template void ghost_backward<T>(const Shape&, int64_t, const T*, const T*, const param_t<T>*,    \
                                  const param_t<T>*, const param_t<T>*, T*, param_t<T>*,           \
                                  param_t<T>*);
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm
