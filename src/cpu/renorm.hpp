// Batch Renormalization's per-channel correction (Ioffe, 2017, Algorithm 1),
// shared by the float and double paths and the MPI path so that all of them
// fold the same r and d into batch norm's scale and shift.
#pragma once

#include <algorithm>
#include <cmath>

namespace bnorm::cpu {

struct RenormCorrection {
  double r = 1;
  double d = 0;
};

// From the running statistics before this batch's update and the batch mean
// and biased variance:
//   sigma = sqrt(running_var + eps), sigma_B = sqrt(var + eps)
//   r = clip(sigma_B / sigma, 1/rmax, rmax), d = clip((mean - running_mean) / sigma, -dmax, dmax)
// With rmax = 1 the clip returns 1.0 itself and with dmax = 0 a signed zero,
// made +0 here, so that folding them in leaves batch norm's values bit for bit.
// A NaN statistic gives NaN r and d (std::clamp passes NaN through), which
// spoils only its own channel.
inline RenormCorrection renorm_correction(double running_mean, double running_var, double mean,
                                          double var, double eps, double rmax, double dmax) {
  const double sigma = std::sqrt(running_var + eps);
  const double sigma_b = std::sqrt(var + eps);
  RenormCorrection out;
  out.r = std::clamp(sigma_b / sigma, 1.0 / rmax, rmax);
  out.d = std::clamp((mean - running_mean) / sigma, -dmax, dmax) + 0.0;
  return out;
}

// y = g * ((x - mean) * invstd * r + d) + b = (g * r) * (x - mean) * invstd + (g * d + b):
// batch norm with these weight and bias. d = 0 leaves b untouched.
inline void fold_renorm(const RenormCorrection& rd, double& g, double& b) {
  if (rd.d != 0) b += g * rd.d;
  g *= rd.r;
}

// dL/dweight = sum dy * ((x - mean) * invstd * r + d) = r * sum dy * x_hat_bn + d * sum dy.
inline double renorm_dweight(const RenormCorrection& rd, double sum_dy_xhat, double sum_dy) {
  const double out = rd.r * sum_dy_xhat;
  return rd.d != 0 ? out + rd.d * sum_dy : out;
}

// The running variance after a batch of m values with biased variance var,
// factor f: the unbiased var * m / (m - 1) or var itself is averaged in
// (Options::unbiased_running_var). The unbiased form keeps the operation
// order batch norm always had, so its results stay bit for bit.
inline double running_var_update(double running_var, double f, double var, double m,
                                 bool unbiased) {
  return (1 - f) * running_var + (unbiased ? f * var * m / (m - 1) : f * var);
}

}  // namespace bnorm::cpu
