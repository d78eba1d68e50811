// Synchronized batch norm: rank-local kernels from src/cpu, three collectives
// per call (pre-flight agreement, one O(c) reduction, its broadcast).
#include <bnorm/mpi.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "distributed_impl.hpp"
#include "mpi/collectives.hpp"
#include "mpi/sync_impl.hpp"
#include "rules.hpp"
#include "validate.hpp"

namespace bnorm::mpi {
namespace {

// A pointer to numel values must be non-null unless there are none.
void check_data(const char* fn, const Shape& shape, const void* p, const char* name) {
  if (shape.numel() > 0) detail::check_not_null(fn, p, name);
}

template <class T>
constexpr int64_t dtype_code() {
  return static_cast<int64_t>(dtype_of<T>::value);
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
  const Deadline deadline(comm, fn);
  Agreement mine;
  double factor = 0;
  const bool track = running_mean != nullptr;
  // Validate without throwing: a rank that threw here would leave the others
  // waiting in the collective below forever.
  mine.local_error = local_error([&] {
    extra_check();
    detail::check_local_shape(fn, local);
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

  const size_t cs = size_t(local.c);
  std::vector<Moments> stats(cs);
  if (local.n > 0) {
    std::vector<double> mean(cs), m2(cs);
    distributed::impl::slice_moments(local, x, mean.data(), m2.data());
    for (size_t k = 0; k < cs; ++k) stats[k] = {double(local.m()), mean[k], m2[k]};
  }
  // A rank without samples contributes (0, 0, 0), the identity of the merge.
  merge_moments(deadline, stats);

  std::vector<double> mean(cs), var(cs);
  for (size_t k = 0; k < cs; ++k) {
    mean[k] = stats[k].mean;
    var[k] = stats[k].m2 / double(m_global);
  }
  distributed::impl::normalize_with_moments(local, x, weight, bias, mean.data(), var.data(),
                                            m_global, y, save_mean, save_invstd, running_mean,
                                            running_var, factor, options, {renorm, r, d});
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
    detail::check_local_shape(fn, local);
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
  std::vector<double> sum_dy(cs), sum_dy_xhat(cs);
  distributed::impl::slice_backward_sums(local, dy, x, save_mean, save_invstd, sum_dy.data(),
                                         sum_dy_xhat.data());
  std::vector<Sums> sums(cs);
  for (size_t k = 0; k < cs; ++k) sums[k] = {sum_dy[k], sum_dy_xhat[k]};
  sum_gradients(deadline, sums);

  for (size_t k = 0; k < cs; ++k) {
    sum_dy[k] = sums[k].dy;
    sum_dy_xhat[k] = sums[k].dy_xhat;
    if (dbias) dbias[k] = P(sums[k].dy);
    if (!dweight) continue;
    // Batch Renormalization: x_hat is r * (batch norm's x_hat) + d.
    dweight[k] =
        r ? P(detail::renorm_dweight({double(r[k]), double(d[k])}, sums[k].dy_xhat, sums[k].dy))
          : P(sums[k].dy_xhat);
  }
  distributed::impl::dx_from_sums(local, dy, x, weight, save_mean, save_invstd, sum_dy.data(),
                                  sum_dy_xhat.data(), m_global, dx, r);
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

#define BNORM_MPI_INSTANTIATE(T, ...)                                                             \
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
BNORM_FOR_EACH_TYPE(BNORM_MPI_INSTANTIATE)
#undef BNORM_MPI_INSTANTIATE

}  // namespace bnorm::mpi
