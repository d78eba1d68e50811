// The arithmetic of the split training passes (include/bnorm/distributed.hpp)
// without their argument checks, shared by bnorm::distributed and bnorm::mpi:
// the MPI layer validates on every rank before its first collective and may
// not throw on one rank after it, so it calls these directly.
#pragma once

#include <bnorm/bnorm.hpp>
#include <cstdint>

namespace bnorm::distributed::impl {

// Per channel: mean and M2 = sum (x - mean)^2 of the slice; zeros for n = 0.
template <class T>
void slice_moments(const Shape& local, const T* x, double* mean, double* m2);

// Batch Renormalization's limits and outputs (r, d: c values or null).
template <class T>
struct Renorm {
  const RenormLimits* limits = nullptr;  // null: batch norm
  param_t<T>* r = nullptr;
  param_t<T>* d = nullptr;
};

// y of the slice, save_mean and save_invstd, and the running statistics
// (null, or updated with this batch's weight `factor`) from the global mean
// and biased var over count values per channel. With renorm.limits, r and d
// come from the running statistics before the update and fold into the
// weight and bias.
template <class T>
void normalize_with_moments(const Shape& local, const T* x, const param_t<T>* weight,
                            const param_t<T>* bias, const double* mean, const double* var,
                            int64_t count, T* y, param_t<T>* save_mean, param_t<T>* save_invstd,
                            param_t<T>* running_mean, param_t<T>* running_var, double factor,
                            const Options& options, const Renorm<T>& renorm = {});

// Per channel over the slice: sum dy and sum dy * x_hat; zeros for n = 0.
template <class T>
void slice_backward_sums(const Shape& local, const T* dy, const T* x, const param_t<T>* save_mean,
                         const param_t<T>* save_invstd, double* sum_dy, double* sum_dy_xhat);

// dx of the slice from the global sums over count values per channel; r
// (Batch Renormalization, or null) scales the weight.
template <class T>
void dx_from_sums(const Shape& local, const T* dy, const T* x, const param_t<T>* weight,
                  const param_t<T>* save_mean, const param_t<T>* save_invstd, const double* sum_dy,
                  const double* sum_dy_xhat, int64_t count, T* dx, const param_t<T>* r = nullptr);

}  // namespace bnorm::distributed::impl
