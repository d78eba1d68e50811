// The one interface of the CPU kernels (src/cpu/*.cpp), for every element
// type of BNORM_FOR_EACH_TYPE. The core (src/*.cpp, src/mpi) validates every
// argument first; kernels never throw on bad values (a NaN stays in its own
// channel). They see the shape, options and types of bnorm/types.hpp and the
// per-channel rules of src/rules.hpp, never the layer classes.
//
// The fast path for every element type: Highway kernels compiled for every
// x86 target and chosen at run time (src/cpu/fast_*.cpp), OpenMP threads,
// fused passes. Elements are loaded as T, converted to P = param_t<T> (float
// for float, bfloat16 and float16; double for double) inside the vector
// loops, computed in P and converted back to T once on the way out.
//
// Determinism: every reduction is split into work units that depend only on
// the shape and the element type (never on the thread count); each unit's
// partial result lands in its own slot and the slots are merged in unit
// order, so 1, 2 or any number of threads give bitwise identical results.
#pragma once

#include <bnorm/types.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../rules.hpp"

namespace bnorm::cpu {

// Threads a kernel may use (set_num_threads, else OpenMP's default).
int thread_count();

// What the training forward writes besides y. factor: weight of this batch in
// the running statistics (momentum or 1/num_batches_tracked).
template <class P>
struct ForwardOutputs {
  const P* weight = nullptr;
  const P* bias = nullptr;
  P* save_mean = nullptr;
  P* save_invstd = nullptr;
  P* running_mean = nullptr;
  P* running_var = nullptr;
  double eps = 1e-5;
  double factor = 0;
  bool unbiased_running_var = true;
  // Batch Renormalization: r and d (renorm.hpp) from the running statistics
  // before their update, folded into the scale and shift; r_out and d_out
  // (each may be null) receive them.
  bool renorm = false;
  double rmax = 1, dmax = 0;
  P* r_out = nullptr;
  P* d_out = nullptr;
};

// The outputs of a training forward (plain or fused) with its options.
template <class P>
inline ForwardOutputs<P> forward_outputs(const P* weight, const P* bias, P* save_mean,
                                         P* save_invstd, P* running_mean, P* running_var,
                                         const Options& options, double factor) {
  ForwardOutputs<P> out;
  out.weight = weight;
  out.bias = bias;
  out.save_mean = save_mean;
  out.save_invstd = save_invstd;
  out.running_mean = running_mean;
  out.running_var = running_var;
  out.eps = options.eps;
  out.factor = factor;
  out.unbiased_running_var = options.unbiased_running_var;
  return out;
}

// Per channel, from the batch mean and biased variance: the saved and the
// running statistics, and y = (x - mu) * scale + shift with mu in P. shift
// absorbs mean - mu (the part of the double mean a float cannot hold), so
// that x - mu stays exact when |mean| >> std.
template <class P>
inline void finish_forward_channel(const ForwardOutputs<P>& p, double m, int64_t k, double mean,
                                   double var, P& mu, P& scale, P& shift) {
  const double invstd = detail::invstd_of(var, p.eps);
  double g = p.weight ? double(p.weight[k]) : 1.0;
  double b = p.bias ? double(p.bias[k]) : 0.0;
  if (p.renorm) {
    const detail::RenormCorrection rd = detail::renorm_correction(
        double(p.running_mean[k]), double(p.running_var[k]), mean, var, p.eps, p.rmax, p.dmax);
    if (p.r_out) p.r_out[k] = P(rd.r);
    if (p.d_out) p.d_out[k] = P(rd.d);
    detail::fold_renorm(rd, g, b);
  }
  mu = P(mean);
  scale = P(g * invstd);
  shift = P(b - (mean - double(mu)) * g * invstd);
  // Every |x - mean| is at most sqrt(m * var). Where that reach passes half
  // of P's range (float32 channels spread over 1e38), x - mu could overflow:
  // y = x * scale + (b - mean * g * invstd) instead, whose terms stay within
  // sqrt(m) + |mean| / std of y's size (both bounded there by 2 sqrt(m)).
  // (Squared for float, whose half range squared fits a double: a sqrt per
  // channel showed in the 2048-channel rows.)
  const double room = 0.5 * double(std::numeric_limits<P>::max()) - std::abs(mean - double(mu));
  if (std::is_same_v<P, double> ? std::sqrt(m * var) > room : m * var > room * room) {
    mu = P(0);
    shift = P(b - mean * g * invstd);
  }
  if (p.save_mean) p.save_mean[k] = P(mean);
  if (p.save_invstd) p.save_invstd[k] = P(invstd);
  if (p.running_mean) {
    const double f = p.factor;
    p.running_mean[k] = P(detail::running_mean_update(double(p.running_mean[k]), f, mean));
    p.running_var[k] =
        P(detail::running_var_update(double(p.running_var[k]), f, var, m, p.unbiased_running_var));
  }
}

template <class P>
struct BackwardOutputs {
  const P* weight = nullptr;
  const P* mean = nullptr;
  const P* invstd = nullptr;
  P* dweight = nullptr;
  P* dbias = nullptr;
  bool through_moments = true;
  // Batch Renormalization's constants (null for batch norm): the gradient
  // uses weight * r, and dweight = r * sum dy * x_hat + d * sum dy.
  const P* renorm_r = nullptr;
  const P* renorm_d = nullptr;
};

// Per channel, from sum dy and sum dy * (x - mean): dweight, dbias and
// dx = a * dy + b * (x - mean) + c.
template <class P>
inline void finish_backward_channel(const BackwardOutputs<P>& p, double m, int64_t k, double sum_dy,
                                    double sum_dy_xmu, P& a, P& b, P& c) {
  const double invstd = double(p.invstd[k]);
  const double sum_dy_xhat = sum_dy_xmu * invstd;
  double g = p.weight ? double(p.weight[k]) : 1.0;
  if (p.renorm_r) {
    const detail::RenormCorrection rd{double(p.renorm_r[k]), double(p.renorm_d[k])};
    if (p.dweight) p.dweight[k] = P(detail::renorm_dweight(rd, sum_dy_xhat, sum_dy));
    g *= rd.r;
  } else if (p.dweight) {
    p.dweight[k] = P(sum_dy_xhat);
  }
  if (p.dbias) p.dbias[k] = P(sum_dy);
  const double g_invstd = g * invstd;
  a = P(g_invstd);
  b = p.through_moments ? P(-g_invstd * invstd * sum_dy_xhat / m) : P(0);
  c = p.through_moments ? P(-g_invstd * sum_dy / m) : P(0);
}

// The dispatched kernels, defined for T = float, double, bfloat16, float16
// (P = param_t<T>).

// Statistics, y, saved and running statistics in as few passes as fit.
template <class T>
void forward_training_fast(const Shape& shape, const T* x, T* y,
                           const ForwardOutputs<param_t<T>>& out);

// y = (x - mu_k) * scale_k + shift_k.
template <class T>
void normalize_fast(const Shape& shape, const T* x, const param_t<T>* mu, const param_t<T>* scale,
                    const param_t<T>* shift, T* y);

// Per-channel mean and biased variance (double), as cpu::moments.
template <class T>
void moments_fast(const Shape& shape, const T* x, double* mean, double* var);

// sum dy and sum dy * (x - mu_k) for mu in P.
template <class T>
void backward_reduce_fast(const Shape& shape, const T* dy, const T* x, const param_t<T>* mu,
                          double* sum_dy, double* sum_dy_xmu);

// dx = a_k * dy + b_k * (x - mu_k) + c_k.
template <class T>
void backward_dx_fast(const Shape& shape, const T* dy, const T* x, const param_t<T>* mu,
                      const param_t<T>* a, const param_t<T>* b, const param_t<T>* c, T* dx);

// Both backward passes; dx may be null (then only the reduction runs).
template <class T>
void backward_fast(const Shape& shape, const T* dy, const T* x, T* dx,
                   const BackwardOutputs<param_t<T>>& out);

// ---- The fused epilogue (bnorm/fused.hpp; src/cpu/fast_fused.cpp): the
// forward's epilogue pass and the backward's two passes with the
// activation's mask. src/fused.cpp computes the per-channel coefficients.

template <class T>
struct FusedArgs {
  using P = param_t<T>;
  Shape shape{};
  Activation act = Activation::identity;
  P slope = 0;
  // Forward: y = act((x - p0) * p1 + p2 + residual).
  const T* x = nullptr;
  const T* residual = nullptr;
  T* y = nullptr;
  // Backward: dz = dy * act'(from y); g = x, or act^-1(y) when from_output.
  const T* dy = nullptr;
  const T* y_in = nullptr;
  bool from_output = false;
  // Reduction: sum_dz_k = sum dz, sum_dz_g_k = sum dz * (g - p0_k); both
  // zeroed by the caller.
  double* sum_dz = nullptr;
  double* sum_dz_g = nullptr;
  // dx = p1 * dz + p2 * (g - p0) + p3; dresidual = dz (each when non-null).
  T* dx = nullptr;
  T* dresidual = nullptr;
  // dz_out: the reduction also stores dz there; dz_in: the dx pass reads dz
  // from there instead of forming it from dy and y. Set together only where
  // dz is exact in T (relu, identity, or T = P), so dx does not change.
  T* dz_out = nullptr;
  const T* dz_in = nullptr;
  const P* p[4] = {nullptr, nullptr, nullptr, nullptr};
};

template <class T>
void fused_normalize_fast(const FusedArgs<T>& args);
template <class T>
void fused_reduce_fast(const FusedArgs<T>& args);
template <class T>
void fused_dx_fast(const FusedArgs<T>& args);

// ---- Double per-channel parameters (src/cpu/kernels.cpp over the kernels
// above), for the inference forward and the distributed passes: each rounds
// its parameters to P once, the mean's rounding folded into the shift (or
// c) terms so that x - mean stays exact near the mean.

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
