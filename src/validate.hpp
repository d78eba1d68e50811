// Argument checks shared by the public entry points. Each throws
// std::invalid_argument whose message names the function, the argument and
// the offending value; callers run all checks before writing anything.
#pragma once

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <cmath>
#include <stdexcept>
#include <string>

#include "rules.hpp"

namespace bnorm::detail {

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

// A rank's or process's slice of a distributed batch may hold zero samples;
// c, s and the layout are checked as check_shape checks them.
inline void check_local_shape(const char* fn, const Shape& shape) {
  if (shape.n < 0) fail(fn, "shape.n must be >= 0, got " + std::to_string(shape.n));
  Shape probe = shape;
  probe.n = shape.n == 0 ? 1 : shape.n;
  check_shape(fn, probe);
}

inline void check_eps(const char* fn, double eps) {
  if (!std::isfinite(eps) || eps <= 0)
    fail(fn, "eps must be finite and > 0, got " + std::to_string(eps));
}

inline void check_not_null(const char* fn, const void* p, const char* name) {
  if (p == nullptr) fail(fn, std::string(name) + " must not be null");
}

// The checks of a training forward on this shape, before anything is
// written. Returns the weight of this batch in the running statistics.
inline double check_training(const char* fn, const Shape& shape, const void* x, const void* y,
                             const void* running_mean, const void* running_var,
                             const Options& options) {
  check_shape(fn, shape);
  if (shape.m() < 2)
    fail(fn, "expected more than 1 value per channel in training, got n*s = " +
                 std::to_string(shape.m()));
  check_eps(fn, options.eps);
  check_not_null(fn, x, "x");
  check_not_null(fn, y, "y");
  return running_factor(fn, options, running_mean, running_var);
}

// The checks of an inference forward (running statistics normalize).
inline void check_inference(const char* fn, const Shape& shape, double eps, const void* x,
                            const void* running_mean, const void* running_var, const void* y) {
  check_shape(fn, shape);
  check_eps(fn, eps);
  check_not_null(fn, x, "x");
  check_not_null(fn, running_mean, "running_mean");
  check_not_null(fn, running_var, "running_var");
  check_not_null(fn, y, "y");
}

// Batch Renormalization's limits, and the running statistics r and d come
// from (checked for both-or-neither by running_factor before).
inline void check_renorm(const char* fn, const RenormLimits& limits, const void* running_mean) {
  if (!std::isfinite(limits.rmax) || limits.rmax < 1)
    fail(fn, "rmax must be finite and >= 1, got " + std::to_string(limits.rmax));
  if (!std::isfinite(limits.dmax) || limits.dmax < 0)
    fail(fn, "dmax must be finite and >= 0, got " + std::to_string(limits.dmax));
  if (running_mean == nullptr)
    fail(fn, "running_mean and running_var are required: r and d are defined by them");
}

// Ghost batch norm's groups: at least 2 samples each, and a last group that
// still holds more than one value per channel.
inline void check_ghost(const char* fn, const Shape& shape, int64_t virtual_batch_size) {
  if (virtual_batch_size < 2)
    fail(fn, "virtual_batch_size must be >= 2, got " + std::to_string(virtual_batch_size));
  const int64_t last = shape.n % virtual_batch_size;
  if (last != 0 && last * shape.s < 2)
    fail(fn, "the last group holds " + std::to_string(last) + " sample(s) of n = " +
                 std::to_string(shape.n) + " with s = " + std::to_string(shape.s) +
                 ": 1 value per channel, expected more than 1 (virtual_batch_size " +
                 std::to_string(virtual_batch_size) + ")");
}

// Group g's shape: samples [g * virtual_batch_size, min(n, (g + 1) * virtual_batch_size)).
inline Shape ghost_group(const Shape& shape, int64_t virtual_batch_size, int64_t g) {
  Shape part = shape;
  part.n = std::min(shape.n, (g + 1) * virtual_batch_size) - g * virtual_batch_size;
  return part;
}

}  // namespace bnorm::detail
