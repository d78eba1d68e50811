// Batch norm's per-channel rules, each decided here once: how eps enters the
// standard deviation, the weight of a batch in the running statistics, how
// the running statistics move, and Batch Renormalization's correction. The
// core (src/*.cpp, src/mpi) and the kernels (src/cpu) both apply them, in
// double, so that every path rounds the same values the same way.
#pragma once

#include <algorithm>
#include <bnorm/types.hpp>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>

namespace bnorm::detail {

[[noreturn]] inline void fail(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string("bnorm::") + fn + ": " + what);
}

// sigma = sqrt(var + eps), for a batch variance and a running one alike.
inline double stddev_of(double var, double eps) { return std::sqrt(var + eps); }

// invstd = 1 / sqrt(var + eps).
inline double invstd_of(double var, double eps) { return 1.0 / stddev_of(var, eps); }

// A momentum given by the caller: this batch's weight, in [0, 1].
inline void check_momentum(const char* fn, std::optional<double> momentum) {
  if (momentum && (!std::isfinite(*momentum) || *momentum < 0 || *momentum > 1))
    fail(fn, "momentum must be in [0, 1], got " + std::to_string(*momentum));
}

// Checks the running-statistics arguments of a training forward and returns
// the weight of this batch in them: momentum, or 1 / num_batches_tracked for
// the cumulative average (0 when nothing is tracked).
inline double running_factor(const char* fn, const Options& options, const void* running_mean,
                             const void* running_var) {
  if ((running_mean == nullptr) != (running_var == nullptr))
    fail(fn, std::string("running_mean and running_var must both be given or both null, got "
                         "running_") +
                 (running_mean == nullptr ? "mean null" : "var null"));
  check_momentum(fn, options.momentum);
  if (options.momentum) return *options.momentum;
  if (running_mean == nullptr) return 0;
  if (options.num_batches_tracked < 1)
    fail(fn, "momentum is nullopt (cumulative average) but num_batches_tracked is " +
                 std::to_string(options.num_batches_tracked) + ", expected >= 1");
  return 1.0 / double(options.num_batches_tracked);
}

// The running mean after a batch with mean `mean`, factor f.
inline double running_mean_update(double running_mean, double f, double mean) {
  return (1 - f) * running_mean + f * mean;
}

// The running variance after a batch of m values with biased variance var,
// factor f: the unbiased var * m / (m - 1) or var itself is averaged in
// (Options::unbiased_running_var). The unbiased form keeps the operation
// order batch norm always had, so its results stay bit for bit.
inline double running_var_update(double running_var, double f, double var, double m,
                                 bool unbiased) {
  return (1 - f) * running_var + (unbiased ? f * var * m / (m - 1) : f * var);
}

// ---- Batch Renormalization's per-channel correction (Ioffe, 2017, Algorithm 1)

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
  const double sigma = stddev_of(running_var, eps);
  const double sigma_b = stddev_of(var, eps);
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

}  // namespace bnorm::detail
