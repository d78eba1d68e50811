// Synchronized batch norm: rank-local kernels from src/cpu, three collectives
// per call (pre-flight agreement, one O(c) reduction, its broadcast).
#include <bnorm/mpi.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.hpp"
#include "cpu/renorm.hpp"
#include "mpi/collectives.hpp"
#include "mpi/sync_impl.hpp"
#include "validate.hpp"

namespace bnorm::mpi {
namespace {

double param(const auto* p, int64_t k, double fallback) {
  return p == nullptr ? fallback : double(p[k]);
}

// The rank-local shape may hold zero samples; everything else as the core.
void check_local_shape(const char* fn, const Shape& shape) {
  if (shape.n < 0) detail::fail(fn, "shape.n must be >= 0, got " + std::to_string(shape.n));
  if (shape.n == 0) {
    // The core's checks want n >= 1; run them on one sample for c, s, layout.
    Shape one = shape;
    one.n = 1;
    detail::check_shape(fn, one);
  } else {
    detail::check_shape(fn, shape);
  }
}

// A pointer to numel values must be non-null unless there are none.
void check_data(const char* fn, const Shape& shape, const void* p, const char* name) {
  if (shape.numel() > 0) detail::check_not_null(fn, p, name);
}

template <class T>
constexpr int64_t dtype_code() {
  if constexpr (std::is_same_v<T, float>) return 1;
  if constexpr (std::is_same_v<T, double>) return 2;
  if constexpr (std::is_same_v<T, bfloat16>) return 3;
  return 4;
}

int64_t bits(double v) {
  int64_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

}  // namespace

template <class T>
void forward_training_checked(const char* fn, const std::function<void()>& extra_check,
                              MPI_Comm comm, const Shape& local, const T* x,
                              const param_t<T>* weight, const param_t<T>* bias, T* y,
                              param_t<T>* save_mean, param_t<T>* save_invstd,
                              param_t<T>* running_mean, param_t<T>* running_var,
                              const Options& options, const RenormLimits* renorm, param_t<T>* r,
                              param_t<T>* d) {
  using P = param_t<T>;
  const Deadline deadline(comm, fn);
  Agreement mine;
  double factor = 0;
  const bool track = running_mean != nullptr;
  // Validate without throwing: a rank that threw here would leave the others
  // waiting in the collective below forever.
  mine.local_error = local_error([&] {
    extra_check();
    check_local_shape(fn, local);
    detail::check_eps(fn, options.eps);
    check_data(fn, local, x, "x");
    check_data(fn, local, y, "y");
    factor = detail::running_factor(fn, options, running_mean, running_var);
    if (renorm) detail::check_renorm(fn, *renorm, running_mean);
  });
  mine.set(Field::c, local.c);
  mine.set(Field::layout, static_cast<int64_t>(local.layout));
  mine.set(Field::dtype, dtype_code<T>());
  mine.set(Field::eps, bits(options.eps));
  mine.set(Field::momentum, options.momentum ? bits(*options.momentum) : -1);
  mine.set(Field::num_batches_tracked,
           !options.momentum && track ? options.num_batches_tracked : 0);
  mine.set(Field::track_running_stats, !track ? 0 : options.unbiased_running_var ? 1 : 2);
  mine.set(Field::rmax, renorm ? bits(renorm->rmax) : 0);
  mine.set(Field::dmax, renorm ? bits(renorm->dmax) : 0);
  mine.m = mine.local_error.empty() ? local.m() : 0;
  const int64_t m_global = agree(deadline, mine);
  if (m_global < 2)
    detail::fail(fn,
                 "expected more than 1 value per channel in training over all ranks, got "
                 "a global n*s = " +
                     std::to_string(m_global));

  const int64_t c = local.c;
  const size_t cs = size_t(c);
  const double m_local = double(local.m());
  std::vector<Moments> stats(cs);
  if (local.n > 0) {
    std::vector<double> mean(cs), var(cs);
    cpu::moments(local, x, mean.data(), var.data());
    for (size_t k = 0; k < cs; ++k) stats[k] = {m_local, mean[k], var[k] * m_local};
  }
  // A rank without samples contributes (0, 0, 0), the identity of the merge.
  merge_moments(deadline, stats);

  const double m = double(m_global);
  std::vector<double> mean(cs), scale(cs), shift(cs), invstd(cs);
  for (size_t k = 0; k < cs; ++k) {
    mean[k] = stats[k].mean;
    const double var = stats[k].m2 / m;
    invstd[k] = 1.0 / std::sqrt(var + options.eps);
    double g = param(weight, int64_t(k), 1.0), b = param(bias, int64_t(k), 0.0);
    if (renorm) {
      // r and d from the global statistics and the running statistics
      // before this step's update (the same on every rank).
      const cpu::RenormCorrection rd =
          cpu::renorm_correction(double(running_mean[k]), double(running_var[k]), mean[k], var,
                                 options.eps, renorm->rmax, renorm->dmax);
      if (r) r[k] = P(rd.r);
      if (d) d[k] = P(rd.d);
      cpu::fold_renorm(rd, g, b);
    }
    scale[k] = g * invstd[k];
    shift[k] = b;
  }
  if (local.n > 0) cpu::normalize(local, x, mean.data(), scale.data(), shift.data(), y);
  for (size_t k = 0; k < cs; ++k) {
    if (save_mean) save_mean[k] = P(mean[k]);
    if (save_invstd) save_invstd[k] = P(invstd[k]);
    if (track) {
      // The unbiased variance M2 / (m - 1) written as the core writes it.
      const double var = stats[k].m2 / m;
      running_mean[k] = P((1 - factor) * double(running_mean[k]) + factor * mean[k]);
      running_var[k] = P(cpu::running_var_update(double(running_var[k]), factor, var, m,
                                                 options.unbiased_running_var));
    }
  }
}

template <class T>
void backward_checked(const char* fn, const std::function<void()>& extra_check, MPI_Comm comm,
                      const Shape& local, const T* dy, const T* x, const param_t<T>* weight,
                      const param_t<T>* save_mean, const param_t<T>* save_invstd, T* dx,
                      param_t<T>* dweight, param_t<T>* dbias, const param_t<T>* r,
                      const param_t<T>* d) {
  using P = param_t<T>;
  const Deadline deadline(comm, fn);
  Agreement mine;
  mine.local_error = local_error([&] {
    extra_check();
    check_local_shape(fn, local);
    check_data(fn, local, dy, "dy");
    check_data(fn, local, x, "x");
    detail::check_not_null(fn, save_mean, "save_mean");
    detail::check_not_null(fn, save_invstd, "save_invstd");
    if (r || d) {
      detail::check_not_null(fn, r, "r");
      detail::check_not_null(fn, d, "d");
    }
  });
  mine.set(Field::c, local.c);
  mine.set(Field::layout, static_cast<int64_t>(local.layout));
  mine.set(Field::dtype, dtype_code<T>());
  mine.m = mine.local_error.empty() ? local.m() : 0;
  const int64_t m_global = agree(deadline, mine);

  const size_t cs = size_t(local.c);
  std::vector<double> mean(cs), sum_dy(cs, 0.0), sum_dy_xmu(cs, 0.0);
  for (size_t k = 0; k < cs; ++k) mean[k] = double(save_mean[k]);
  if (local.n > 0)
    cpu::backward_reduce(local, dy, x, mean.data(), sum_dy.data(), sum_dy_xmu.data());
  std::vector<Sums> sums(cs);
  for (size_t k = 0; k < cs; ++k) sums[k] = {sum_dy[k], sum_dy_xmu[k] * double(save_invstd[k])};
  sum_gradients(deadline, sums);

  const double m = double(m_global);
  std::vector<double> a(cs), b(cs), cc(cs);
  for (size_t k = 0; k < cs; ++k) {
    const double invstd = double(save_invstd[k]);
    double g = param(weight, int64_t(k), 1.0);
    if (r) {
      // Batch Renormalization: r and d are constants; weight * r scales.
      const cpu::RenormCorrection rd{double(r[k]), double(d[k])};
      if (dweight) dweight[k] = P(cpu::renorm_dweight(rd, sums[k].dy_xhat, sums[k].dy));
      g *= rd.r;
    } else if (dweight) {
      dweight[k] = P(sums[k].dy_xhat);
    }
    if (dbias) dbias[k] = P(sums[k].dy);
    const double g_invstd = g * invstd;
    a[k] = g_invstd;
    b[k] = -g_invstd * invstd * sums[k].dy_xhat / m;
    cc[k] = -g_invstd * sums[k].dy / m;
  }
  if (dx && local.n > 0)
    cpu::backward_dx(local, dy, x, mean.data(), a.data(), b.data(), cc.data(), dx);
}

template <class T>
void forward_training(MPI_Comm comm, const Shape& local, const T* x, const param_t<T>* weight,
                      const param_t<T>* bias, T* y, param_t<T>* save_mean, param_t<T>* save_invstd,
                      param_t<T>* running_mean, param_t<T>* running_var, const Options& options) {
  forward_training_checked(
      "mpi::forward_training", [] {}, comm, local, x, weight, bias, y, save_mean, save_invstd,
      running_mean, running_var, options);
}

template <class T>
void backward(MPI_Comm comm, const Shape& local, const T* dy, const T* x, const param_t<T>* weight,
              const param_t<T>* save_mean, const param_t<T>* save_invstd, T* dx,
              param_t<T>* dweight, param_t<T>* dbias) {
  backward_checked(
      "mpi::backward", [] {}, comm, local, dy, x, weight, save_mean, save_invstd, dx, dweight,
      dbias);
}

template <class T>
void batch_renorm_forward_training(MPI_Comm comm, const Shape& local, const T* x,
                                   const param_t<T>* weight, const param_t<T>* bias, T* y,
                                   param_t<T>* save_mean, param_t<T>* save_invstd, param_t<T>* r,
                                   param_t<T>* d, param_t<T>* running_mean, param_t<T>* running_var,
                                   const RenormLimits& limits, const Options& options) {
  forward_training_checked(
      "mpi::batch_renorm_forward_training", [] {}, comm, local, x, weight, bias, y, save_mean,
      save_invstd, running_mean, running_var, options, &limits, r, d);
}

template <class T>
void batch_renorm_backward(MPI_Comm comm, const Shape& local, const T* dy, const T* x,
                           const param_t<T>* weight, const param_t<T>* save_mean,
                           const param_t<T>* save_invstd, const param_t<T>* r, const param_t<T>* d,
                           T* dx, param_t<T>* dweight, param_t<T>* dbias) {
  // r and d null would silently give batch norm's gradient: check them here.
  backward_checked(
      "mpi::batch_renorm_backward",
      [&] {
        detail::check_not_null("mpi::batch_renorm_backward", r, "r");
        detail::check_not_null("mpi::batch_renorm_backward", d, "d");
      },
      comm, local, dy, x, weight, save_mean, save_invstd, dx, dweight, dbias, r, d);
}

#define BNORM_MPI_INSTANTIATE(T)                                                                  \
  template void forward_training_checked<T>(                                                      \
      const char*, const std::function<void()>&, MPI_Comm, const Shape&, const T*,                \
      const param_t<T>*, const param_t<T>*, T*, param_t<T>*, param_t<T>*, param_t<T>*,            \
      param_t<T>*, const Options&, const RenormLimits*, param_t<T>*, param_t<T>*);                \
  template void backward_checked<T>(const char*, const std::function<void()>&, MPI_Comm,          \
                                    const Shape&, const T*, const T*, const param_t<T>*,          \
                                    const param_t<T>*, const param_t<T>*, T*, param_t<T>*,        \
                                    param_t<T>*, const param_t<T>*, const param_t<T>*);           \
  template void forward_training<T>(MPI_Comm, const Shape&, const T*, const param_t<T>*,          \
                                    const param_t<T>*, T*, param_t<T>*, param_t<T>*, param_t<T>*, \
                                    param_t<T>*, const Options&);                                 \
  template void backward<T>(MPI_Comm, const Shape&, const T*, const T*, const param_t<T>*,        \
                            const param_t<T>*, const param_t<T>*, T*, param_t<T>*, param_t<T>*);  \
  template void batch_renorm_forward_training<T>(                                                 \
      MPI_Comm, const Shape&, const T*, const param_t<T>*, const param_t<T>*, T*, param_t<T>*,    \
      param_t<T>*, param_t<T>*, param_t<T>*, param_t<T>*, param_t<T>*, const RenormLimits&,       \
      const Options&);                                                                            \
  template void batch_renorm_backward<T>(                                                         \
      MPI_Comm, const Shape&, const T*, const T*, const param_t<T>*, const param_t<T>*,           \
      const param_t<T>*, const param_t<T>*, const param_t<T>*, T*, param_t<T>*, param_t<T>*);
BNORM_MPI_INSTANTIATE(float)
BNORM_MPI_INSTANTIATE(double)
BNORM_MPI_INSTANTIATE(bfloat16)
BNORM_MPI_INSTANTIATE(float16)
#undef BNORM_MPI_INSTANTIATE

}  // namespace bnorm::mpi
