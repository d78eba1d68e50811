// Argument checks shared by the public entry points. Each throws
// std::invalid_argument whose message names the function, the argument and
// the offending value; callers run all checks before writing anything.
#pragma once

#include <bnorm/bnorm.hpp>
#include <cmath>
#include <stdexcept>
#include <string>

namespace bnorm::detail {

[[noreturn]] inline void fail(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string("bnorm::") + fn + ": " + what);
}

inline void check_shape(const char* fn, const Shape& shape) {
  if (shape.n < 1) fail(fn, "shape.n must be >= 1, got " + std::to_string(shape.n));
  if (shape.c < 1) fail(fn, "shape.c must be >= 1, got " + std::to_string(shape.c));
  if (shape.s < 1) fail(fn, "shape.s must be >= 1, got " + std::to_string(shape.s));
  if (shape.layout != Layout::NCHW && shape.layout != Layout::NHWC)
    fail(fn, "shape.layout is not NCHW or NHWC (value " +
                 std::to_string(static_cast<int>(shape.layout)) + ")");
  int64_t nc = 0, ncs = 0;
  if (__builtin_mul_overflow(shape.n, shape.c, &nc) || __builtin_mul_overflow(nc, shape.s, &ncs))
    fail(fn, "shape n*c*s overflows int64 (n=" + std::to_string(shape.n) +
                 ", c=" + std::to_string(shape.c) + ", s=" + std::to_string(shape.s) + ")");
}

inline void check_eps(const char* fn, double eps) {
  if (!std::isfinite(eps) || eps <= 0)
    fail(fn, "eps must be finite and > 0, got " + std::to_string(eps));
}

inline void check_not_null(const char* fn, const void* p, const char* name) {
  if (p == nullptr) fail(fn, std::string(name) + " must not be null");
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
  if (options.momentum) {
    const double momentum = *options.momentum;
    if (!std::isfinite(momentum) || momentum < 0 || momentum > 1)
      fail(fn, "momentum must be in [0, 1], got " + std::to_string(momentum));
    return momentum;
  }
  if (running_mean == nullptr) return 0;
  if (options.num_batches_tracked < 1)
    fail(fn, "momentum is nullopt (cumulative average) but num_batches_tracked is " +
                 std::to_string(options.num_batches_tracked) + ", expected >= 1");
  return 1.0 / double(options.num_batches_tracked);
}

}  // namespace bnorm::detail
