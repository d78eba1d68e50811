// Internal interface of the CPU kernels with double per-channel parameters
// (used by the MPI layer), for every element type (src/cpu/kernels.cpp over
// the fast kernels). Arguments are validated by the
// public functions (src/api.cpp) before any kernel runs; kernels never throw
// on bad values (a NaN stays in its own channel).
//
// Per-channel parameters are double so that float inputs keep their
// precision through the statistics and the normalization.
#pragma once

#include <bnorm/bnorm.hpp>

namespace bnorm::cpu {

// mean_k and the biased variance var_k of every channel (two passes: the
// centered second pass keeps var accurate when |mean| >> std).
template <class T>
void moments(const Shape& shape, const T* x, double* mean, double* var);

// y = (x - mean_k) * scale_k + shift_k.
template <class T>
void normalize(const Shape& shape, const T* x, const double* mean, const double* scale,
               const double* shift, T* y);

// sum_dy_k = sum dy;  sum_dy_xmu_k = sum dy * (x - mean_k).
template <class T>
void backward_reduce(const Shape& shape, const T* dy, const T* x, const double* mean,
                     double* sum_dy, double* sum_dy_xmu);

// dx = a_k * dy + b_k * (x - mean_k) + c_k.
template <class T>
void backward_dx(const Shape& shape, const T* dy, const T* x, const double* mean, const double* a,
                 const double* b, const double* c, T* dx);

}  // namespace bnorm::cpu
