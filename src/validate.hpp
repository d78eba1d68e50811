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

}  // namespace bnorm::detail
