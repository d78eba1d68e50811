// Helpers shared by the tests: seeded random tensors and error measures.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/reference.hpp>
#include <cmath>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace bnorm::test {

// Every element type of bnorm/dtypes.hpp's list, for typed tests.
template <class Void, class... Ts>
struct AfterVoid {
  using types = ::testing::Types<Ts...>;
};
#define BNORM_TEST_TYPE(T, S, name) , T
using ElementTypes = AfterVoid<void BNORM_FOR_EACH_TYPE(BNORM_TEST_TYPE)>::types;
#undef BNORM_TEST_TYPE

inline std::vector<double> random_values(size_t count, uint64_t seed, double mean = 0.0,
                                         double stddev = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(mean, stddev);
  std::vector<double> v(count);
  for (double& e : v) e = dist(rng);
  return v;
}

template <class T>
std::vector<T> cast(std::span<const double> v) {
  return std::vector<T>(v.begin(), v.end());
}

// A value of any element type as double (the 16-bit types convert to float
// exactly, explicitly).
template <class T>
double to_double(T v) {
  if constexpr (std::is_arithmetic_v<T>) {
    return double(v);
  } else {
    return double(float(v));
  }
}

template <class T>
std::vector<double> widen(std::span<const T> v) {
  std::vector<double> out;
  out.reserve(v.size());
  for (const T& e : v) out.push_back(to_double(e));
  return out;
}

// Unit roundoff of T: half the spacing of T's values at 1, the largest
// relative error of one rounding to nearest.
template <class T>
constexpr double unit_roundoff() {
  if constexpr (std::is_same_v<T, double>) return 0x1p-53;
  if constexpr (std::is_same_v<T, float>) return 0x1p-24;
  if constexpr (std::is_same_v<T, bfloat16>) return 0x1p-8;
  return 0x1p-11;  // float16
}
// Half the smallest subnormal of T: the absolute error of one rounding where
// the result is subnormal.
template <class T>
constexpr double subnormal_half_spacing() {
  if constexpr (std::is_same_v<T, double>) return 0x1p-1074;  // (half is not a double)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bfloat16>) return 0x1p-150;
  return 0x1p-25;  // float16
}

// max_i |got_i - want_i| / (u * |want_i| + abs): 1 or less when every value
// is within one rounding of T (u) of the oracle's, plus an absolute term
// for the error of the computation before that rounding. NaN counts as
// failure.
inline double rounding_ratio(std::span<const double> got, std::span<const double> want, double u,
                             double abs) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == want[i]) continue;
    const double r = std::abs(got[i] - want[i]) / (u * std::abs(want[i]) + abs);
    if (!(r <= worst)) worst = std::isnan(r) ? INFINITY : r;
  }
  return worst;
}

inline double max_abs(std::span<const double> v) {
  double m = 0;
  for (double e : v) m = std::max(m, std::abs(e));
  return m;
}

inline double scaled_error(std::span<const double> a, std::span<const double> b) {
  const double e = reference::max_scaled_error(a, b);
  return std::isnan(e) ? INFINITY : e;
}

inline double dx_error(const Shape& shape, std::span<const double> got,
                       std::span<const double> want, std::span<const double> dy,
                       std::span<const double> weight, std::span<const double> invstd) {
  const double e = reference::dx_error(shape, got, want, dy, weight, invstd);
  return std::isnan(e) ? INFINITY : e;
}

inline std::string describe(const Shape& s) {
  return "n=" + std::to_string(s.n) + " c=" + std::to_string(s.c) + " s=" + std::to_string(s.s) +
         (s.layout == Layout::NCHW ? " NCHW" : " NHWC");
}

// Shapes that exercise the edges: m = 2, c = 1, n = 1 with s > 1, 2-D input,
// odd sizes, a long spatial extent.
inline std::vector<Shape> sweep_shapes() {
  std::vector<Shape> out;
  const int64_t dims[][3] = {{2, 1, 1},  {1, 1, 2},  {1, 3, 7},  {5, 3, 1},    {64, 7, 1},
                             {3, 5, 17}, {7, 13, 5}, {4, 33, 9}, {2, 2, 4099}, {1, 4, 1000},
                             {16, 1, 3}, {2, 64, 3}, {3, 130, 1}};
  for (auto layout : {Layout::NCHW, Layout::NHWC})
    for (const auto& d : dims) out.push_back({d[0], d[1], d[2], layout});
  return out;
}

}  // namespace bnorm::test
