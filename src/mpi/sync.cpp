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
  return std::is_same_v<T, float> ? 1 : 2;
}

int64_t bits(double v) {
  int64_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

}  // namespace

template <class T>
void forward_training_checked(const char* fn, const std::function<void()>& extra_check,
                              MPI_Comm comm, const Shape& local, const T* x, const T* weight,
                              const T* bias, T* y, T* save_mean, T* save_invstd, T* running_mean,
                              T* running_var, const Options& options) {
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
  });
  mine.set(Field::c, local.c);
  mine.set(Field::layout, static_cast<int64_t>(local.layout));
  mine.set(Field::dtype, dtype_code<T>());
  mine.set(Field::eps, bits(options.eps));
  mine.set(Field::momentum, options.momentum ? bits(*options.momentum) : -1);
  mine.set(Field::num_batches_tracked,
           !options.momentum && track ? options.num_batches_tracked : 0);
  mine.set(Field::track_running_stats, track ? 1 : 0);
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
    scale[k] = param(weight, int64_t(k), 1.0) * invstd[k];
    shift[k] = param(bias, int64_t(k), 0.0);
  }
  if (local.n > 0) cpu::normalize(local, x, mean.data(), scale.data(), shift.data(), y);
  for (size_t k = 0; k < cs; ++k) {
    if (save_mean) save_mean[k] = T(mean[k]);
    if (save_invstd) save_invstd[k] = T(invstd[k]);
    if (track) {
      // The unbiased variance M2 / (m - 1) written as the core writes it.
      const double var = stats[k].m2 / m;
      running_mean[k] = T((1 - factor) * double(running_mean[k]) + factor * mean[k]);
      running_var[k] = T((1 - factor) * double(running_var[k]) + factor * var * m / (m - 1));
    }
  }
}

template <class T>
void backward_checked(const char* fn, const std::function<void()>& extra_check, MPI_Comm comm,
                      const Shape& local, const T* dy, const T* x, const T* weight,
                      const T* save_mean, const T* save_invstd, T* dx, T* dweight, T* dbias) {
  const Deadline deadline(comm, fn);
  Agreement mine;
  mine.local_error = local_error([&] {
    extra_check();
    check_local_shape(fn, local);
    check_data(fn, local, dy, "dy");
    check_data(fn, local, x, "x");
    detail::check_not_null(fn, save_mean, "save_mean");
    detail::check_not_null(fn, save_invstd, "save_invstd");
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
    if (dweight) dweight[k] = T(sums[k].dy_xhat);
    if (dbias) dbias[k] = T(sums[k].dy);
    const double g_invstd = param(weight, int64_t(k), 1.0) * invstd;
    a[k] = g_invstd;
    b[k] = -g_invstd * invstd * sums[k].dy_xhat / m;
    cc[k] = -g_invstd * sums[k].dy / m;
  }
  if (dx && local.n > 0)
    cpu::backward_dx(local, dy, x, mean.data(), a.data(), b.data(), cc.data(), dx);
}

template <class T>
void forward_training(MPI_Comm comm, const Shape& local, const T* x, const T* weight, const T* bias,
                      T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                      const Options& options) {
  forward_training_checked(
      "mpi::forward_training", [] {}, comm, local, x, weight, bias, y, save_mean, save_invstd,
      running_mean, running_var, options);
}

template <class T>
void backward(MPI_Comm comm, const Shape& local, const T* dy, const T* x, const T* weight,
              const T* save_mean, const T* save_invstd, T* dx, T* dweight, T* dbias) {
  backward_checked(
      "mpi::backward", [] {}, comm, local, dy, x, weight, save_mean, save_invstd, dx, dweight,
      dbias);
}

#define BNORM_MPI_INSTANTIATE(T)                                                                  \
  template void forward_training_checked<T>(const char*, const std::function<void()>&, MPI_Comm,  \
                                            const Shape&, const T*, const T*, const T*, T*, T*,   \
                                            T*, T*, T*, const Options&);                          \
  template void backward_checked<T>(const char*, const std::function<void()>&, MPI_Comm,          \
                                    const Shape&, const T*, const T*, const T*, const T*,         \
                                    const T*, T*, T*, T*);                                        \
  template void forward_training<T>(MPI_Comm, const Shape&, const T*, const T*, const T*, T*, T*, \
                                    T*, T*, T*, const Options&);                                  \
  template void backward<T>(MPI_Comm, const Shape&, const T*, const T*, const T*, const T*,       \
                            const T*, T*, T*, T*);
BNORM_MPI_INSTANTIATE(float)
BNORM_MPI_INSTANTIATE(double)
#undef BNORM_MPI_INSTANTIATE

}  // namespace bnorm::mpi
