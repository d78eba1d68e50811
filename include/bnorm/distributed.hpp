// The training passes split where a data-parallel job exchanges per-channel
// sums, so that any transport can synchronize batch norm: each process holds
// a slice of the global batch, computes its local statistics, the processes
// combine them (the transport's business), and each process then normalizes
// its slice with the global statistics. bnorm.torch.SyncBatchNorm runs these
// over torch.distributed; bnorm::mpi over MPI.
//
// Combining: with a shift K common to all processes (0, or any value every
// process agrees on, such as the running mean), each process contributes
//   S1 = n (mean - K),   S2 = M2 + n (mean - K)^2
// and the sums over processes give
//   mean = K + S1 / N,   var = (S2 - S1^2 / N) / N   (biased; N = sum n).
// The closer K is to the mean, the less of double's precision the
// subtraction costs: about (mean - K)^2 / var units in the last place.
//
// Backward: each process computes sum dy and sum dy * x_hat over its slice;
// their sums over processes give dx on every slice. The weight and bias
// gradients are the local sums (a data-parallel wrapper sums them with the
// other parameters' gradients).
//
// The local shape may hold zero samples (n = 0): its statistics and sums are
// zeros and it writes no elements. Errors throw std::invalid_argument before
// anything is written, as the rest of the API.
#pragma once

#include <cstdint>

#include "bnorm.hpp"

namespace bnorm::distributed {

// Per channel: mean and M2 = sum (x - mean)^2 of the local slice, in double
// (two passes, centered). n = 0 gives zeros.
template <class T>
void local_moments(const Shape& local, const T* x, double* mean, double* m2);

// Training forward of the local slice with the global batch's statistics:
// mean and biased var (c values each, double) over count = N * s values per
// channel (count >= 2). Writes y (the slice), save_mean, save_invstd and the
// running statistics (null or both given, updated as forward_training would
// with these statistics and count).
template <class T>
void forward_with_moments(const Shape& local, const T* x, const param_t<T>* weight,
                          const param_t<T>* bias, const double* mean, const double* var,
                          int64_t count, T* y, param_t<T>* save_mean, param_t<T>* save_invstd,
                          param_t<T>* running_mean, param_t<T>* running_var,
                          const Options& options = {});

// Per channel over the local slice: sum dy and sum dy * x_hat, with x_hat from
// the saved statistics (double).
template <class T>
void local_backward_sums(const Shape& local, const T* dy, const T* x, const param_t<T>* save_mean,
                         const param_t<T>* save_invstd, double* sum_dy, double* sum_dy_xhat);

// dx of the local slice from the global sums over count values per channel:
//   dx = weight * invstd * (dy - sum_dy / count - x_hat * sum_dy_xhat / count).
template <class T>
void backward_with_sums(const Shape& local, const T* dy, const T* x, const param_t<T>* weight,
                        const param_t<T>* save_mean, const param_t<T>* save_invstd,
                        const double* sum_dy, const double* sum_dy_xhat, int64_t count, T* dx);

}  // namespace bnorm::distributed
