// The float32 fast path: Highway kernels compiled for every x86 target and
// chosen at run time (src/cpu/fast_*.cpp), OpenMP threads, fused passes.
//
// Determinism: every reduction is split into work units that depend only on
// the shape (never on the thread count); each unit's partial result lands in
// its own slot and the slots are merged in unit order, so 1, 2 or any number
// of threads give bitwise identical results.
#pragma once

#include <bnorm/bnorm.hpp>
#include <cmath>
#include <cstdint>

#include "renorm.hpp"

namespace bnorm::cpu {

// Threads a kernel may use (set_num_threads, else OpenMP's default).
int thread_count();

// What the training forward writes besides y. factor: weight of this batch in
// the running statistics (momentum or 1/num_batches_tracked).
struct ForwardOutputs {
  const float* weight = nullptr;
  const float* bias = nullptr;
  float* save_mean = nullptr;
  float* save_invstd = nullptr;
  float* running_mean = nullptr;
  float* running_var = nullptr;
  double eps = 1e-5;
  double factor = 0;
  bool unbiased_running_var = true;
  // Batch Renormalization: r and d (renorm.hpp) from the running statistics
  // before their update, folded into the scale and shift; r_out and d_out
  // (each may be null) receive them.
  bool renorm = false;
  double rmax = 1, dmax = 0;
  float* r_out = nullptr;
  float* d_out = nullptr;
};

// Per channel, from the batch mean and biased variance: the saved and the
// running statistics, and y = (x - mu) * scale + shift with float mu. shift
// absorbs mean - mu (the part of the double mean float cannot hold), so that
// x - mu stays exact when |mean| >> std.
inline void finish_forward_channel(const ForwardOutputs& p, double m, int64_t k, double mean,
                                   double var, float& mu, float& scale, float& shift) {
  const double invstd = 1.0 / std::sqrt(var + p.eps);
  double g = p.weight ? double(p.weight[k]) : 1.0;
  double b = p.bias ? double(p.bias[k]) : 0.0;
  if (p.renorm) {
    const RenormCorrection rd = renorm_correction(
        double(p.running_mean[k]), double(p.running_var[k]), mean, var, p.eps, p.rmax, p.dmax);
    if (p.r_out) p.r_out[k] = float(rd.r);
    if (p.d_out) p.d_out[k] = float(rd.d);
    fold_renorm(rd, g, b);
  }
  mu = float(mean);
  scale = float(g * invstd);
  shift = float(b - (mean - double(mu)) * g * invstd);
  if (p.save_mean) p.save_mean[k] = float(mean);
  if (p.save_invstd) p.save_invstd[k] = float(invstd);
  if (p.running_mean) {
    const double f = p.factor;
    p.running_mean[k] = float((1 - f) * double(p.running_mean[k]) + f * mean);
    p.running_var[k] =
        float(running_var_update(double(p.running_var[k]), f, var, m, p.unbiased_running_var));
  }
}

struct BackwardOutputs {
  const float* weight = nullptr;
  const float* mean = nullptr;
  const float* invstd = nullptr;
  float* dweight = nullptr;
  float* dbias = nullptr;
  bool through_moments = true;
  // Batch Renormalization's constants (null for batch norm): the gradient
  // uses weight * r, and dweight = r * sum dy * x_hat + d * sum dy.
  const float* renorm_r = nullptr;
  const float* renorm_d = nullptr;
};

// Per channel, from sum dy and sum dy * (x - mean): dweight, dbias and
// dx = a * dy + b * (x - mean) + c.
inline void finish_backward_channel(const BackwardOutputs& p, double m, int64_t k, double sum_dy,
                                    double sum_dy_xmu, float& a, float& b, float& c) {
  const double invstd = double(p.invstd[k]);
  const double sum_dy_xhat = sum_dy_xmu * invstd;
  double g = p.weight ? double(p.weight[k]) : 1.0;
  if (p.renorm_r) {
    const RenormCorrection rd{double(p.renorm_r[k]), double(p.renorm_d[k])};
    if (p.dweight) p.dweight[k] = float(renorm_dweight(rd, sum_dy_xhat, sum_dy));
    g *= rd.r;
  } else if (p.dweight) {
    p.dweight[k] = float(sum_dy_xhat);
  }
  if (p.dbias) p.dbias[k] = float(sum_dy);
  const double g_invstd = g * invstd;
  a = float(g_invstd);
  b = p.through_moments ? float(-g_invstd * invstd * sum_dy_xhat / m) : 0.f;
  c = p.through_moments ? float(-g_invstd * sum_dy / m) : 0.f;
}

// Statistics, y, saved and running statistics in as few passes as fit.
void forward_training_f32(const Shape& shape, const float* x, float* y, const ForwardOutputs& out);

// y = (x - mu_k) * scale_k + shift_k.
void normalize_f32(const Shape& shape, const float* x, const float* mu, const float* scale,
                   const float* shift, float* y);

// Per-channel mean and biased variance (double), as cpu::moments.
void moments_f32(const Shape& shape, const float* x, double* mean, double* var);

// sum dy and sum dy * (x - mu_k) for float mu.
void backward_reduce_f32(const Shape& shape, const float* dy, const float* x, const float* mu,
                         double* sum_dy, double* sum_dy_xmu);

// dx = a_k * dy + b_k * (x - mu_k) + c_k.
void backward_dx_f32(const Shape& shape, const float* dy, const float* x, const float* mu,
                     const float* a, const float* b, const float* c, float* dx);

// Both backward passes; dx may be null (then only the reduction runs).
void backward_f32(const Shape& shape, const float* dy, const float* x, float* dx,
                  const BackwardOutputs& out);

}  // namespace bnorm::cpu
