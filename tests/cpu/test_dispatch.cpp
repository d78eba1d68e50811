// The fast path for every element type (float, double, bfloat16, float16) on
// every SIMD target this binary carries and this CPU runs
// (hwy::SetSupportedTargetsForTest pins one at a time), with 1 and 2
// threads, against the double-precision reference; bitwise determinism
// across thread counts; dgamma accuracy where straight float sums fail.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <string>

#include "../common.hpp"

namespace bnorm::test {
namespace ref = bnorm::reference;

namespace {

// Shapes that reach every kernel path: the sweep's edge cases (scalar tails,
// c < lanes, 2-D), NCHW whole-channel units, NCHW channels too big for one
// unit (split, merged), NHWC channel-column units (few rows), row units with
// a partial last unit (many rows).
std::vector<Shape> path_shapes() {
  auto shapes = sweep_shapes();
  for (auto layout : {Layout::NCHW, Layout::NHWC}) {
    shapes.push_back({8, 24, 1000, layout});
    shapes.push_back({3, 1, 180001, layout});
    shapes.push_back({1000, 37, 1, layout});
  }
  // Rows too many for channel-column units: row units, wide and partial
  // channel blocks.
  shapes.push_back({2, 80, 9000, Layout::NHWC});
  // Channel-column units over rows of kRowSplitBytes or more (statistics down the
  // columns, y row by row), with a scalar channel tail.
  shapes.push_back({48, 1030, 1, Layout::NCHW});
  shapes.push_back({3, 1100, 7, Layout::NHWC});
  return shapes;
}

template <class T>
struct Outputs {
  using P = param_t<T>;
  std::vector<T> y, dx, yi, dxf;
  std::vector<P> mean, invstd, rm, rv, dw, db;
};

// Inputs rounded to T (weights and biases to P); the reference gets exactly
// these values.
template <class T>
struct Inputs {
  using P = param_t<T>;
  std::vector<T> x, dy;
  std::vector<P> w, b;
  Inputs(const Shape& shape, uint64_t seed) {
    const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
    x = cast<T>(random_values(numel, seed, 0.3, 1.5));
    dy = cast<T>(random_values(numel, seed + 1));
    w = cast<P>(random_values(c, seed + 2, 1.0, 0.5));
    b = cast<P>(random_values(c, seed + 3));
  }
};

template <class T>
Outputs<T> run_all(const Shape& shape, const Inputs<T>& in) {
  using P = param_t<T>;
  const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
  Outputs<T> o;
  o.y.resize(numel);
  o.yi.resize(numel);
  o.dx.resize(numel);
  o.dxf.resize(numel);
  o.mean.resize(c);
  o.invstd.resize(c);
  o.dw.resize(c);
  o.db.resize(c);
  o.rm.assign(c, P(0.5));
  o.rv.assign(c, P(2.0));
  forward_training<T>(shape, in.x.data(), in.w.data(), in.b.data(), o.y.data(), o.mean.data(),
                      o.invstd.data(), o.rm.data(), o.rv.data());
  backward<T>(shape, in.dy.data(), in.x.data(), in.w.data(), o.mean.data(), o.invstd.data(),
              o.dx.data(), o.dw.data(), o.db.data());
  backward_frozen_moments<T>(shape, in.dy.data(), in.x.data(), in.w.data(), o.mean.data(),
                             o.invstd.data(), o.dxf.data(), nullptr, nullptr);
  forward_inference<T>(shape, in.x.data(), in.w.data(), in.b.data(), o.rm.data(), o.rv.data(),
                       o.yi.data(), 1e-5);
  return o;
}

// Tolerances. y and dx: one rounding of T (unit_roundoff<T>() of each
// value, or the subnormal spacing) on top of the error of the computation
// in P before it, which is the float32 (or float64) path's own bound,
// relative to the largest value (y) or to max |weight * invstd * dy| (dx,
// see reference::dx_error). Statistics, dweight and dbias are computed and
// kept in P: P's bound.
template <class T>
constexpr double compute_tol() {
  return std::is_same_v<param_t<T>, double> ? 1e-12 : 2e-5;
}

template <class T>
class Dispatch : public ::testing::Test {
 protected:
  void TearDown() override {
    hwy::SetSupportedTargetsForTest(0);
    set_num_threads(0);
  }
};
using ElementTypes = ::bnorm::test::ElementTypes;
TYPED_TEST_SUITE(Dispatch, ElementTypes);

// Under AddressSanitizer (a Debug build, about 30 times slower) the types
// other than float skip the shapes above 100k values: the float run covers
// them there, and the release run covers every type on every shape.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
template <class T>
bool skip_under_sanitizer(const Shape& shape) {
  return kSanitized && !std::is_same_v<T, float> && shape.numel() > 100000;
}

// max |weight_k * invstd_k * dy_i|: the size of dx's terms.
double dx_scale(const Shape& shape, std::span<const double> dy, std::span<const double> w,
                std::span<const double> invstd) {
  double m = 0;
  for (int64_t i = 0; i < shape.numel(); ++i) {
    const int64_t k = shape.layout == Layout::NHWC ? i % shape.c : i / shape.s % shape.c;
    m = std::max(m, std::abs(w[size_t(k)] * invstd[size_t(k)] * dy[size_t(i)]));
  }
  return m;
}

}  // namespace

TYPED_TEST(Dispatch, EveryTargetAndThreadCountMatchesReference) {
  using T = TypeParam;
  const double u = unit_roundoff<T>(), tol = compute_tol<T>(), tiny = subnormal_half_spacing<T>();
  const auto targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  uint64_t seed = 7000;
  for (const Shape& shape : path_shapes()) {
    seed += 10;
    if (skip_under_sanitizer<T>(shape)) continue;
    const size_t c = size_t(shape.c);
    const Inputs<T> in(shape, seed);
    const auto x = widen<T>(in.x), dy = widen<T>(in.dy);
    const auto w = widen<param_t<T>>(in.w), b = widen<param_t<T>>(in.b);
    const auto want = ref::forward_training(shape, x, w, b, 1e-5);
    const auto g = ref::backward(ref::Method::staged, shape, dy, x, w, 1e-5);
    const auto gf = ref::backward(ref::Method::frozen_moments, shape, dy, x, w, 1e-5);
    const double m = double(shape.m());
    std::vector<double> want_rm(c), want_rv(c);
    for (size_t k = 0; k < c; ++k) {
      want_rm[k] = 0.9 * 0.5 + 0.1 * want.mean[k];
      want_rv[k] = 0.9 * 2.0 + 0.1 * want.var[k] * m / (m - 1);
    }
    const double y_abs = tol * max_abs(want.y) + tiny;
    const double dx_abs = 10 * tol * dx_scale(shape, dy, w, want.invstd) + tiny;
    for (int64_t target : targets)
      for (int threads : {1, 2}) {
        SCOPED_TRACE(std::string(hwy::TargetName(target)) + " threads=" + std::to_string(threads) +
                     " " + describe(shape));
        hwy::SetSupportedTargetsForTest(target);
        set_num_threads(threads);
        const Outputs<T> o = run_all(shape, in);
        EXPECT_LE(rounding_ratio(widen<T>(o.y), want.y, u, y_abs), 1.0);
        EXPECT_LT(scaled_error(widen<param_t<T>>(o.mean), want.mean), tol);
        EXPECT_LT(scaled_error(widen<param_t<T>>(o.invstd), want.invstd), tol);
        EXPECT_LT(scaled_error(widen<param_t<T>>(o.rm), want_rm), tol);
        EXPECT_LT(scaled_error(widen<param_t<T>>(o.rv), want_rv), tol);
        EXPECT_LE(rounding_ratio(widen<T>(o.dx), g.dx, u, dx_abs), 1.0);
        EXPECT_LT(scaled_error(widen<param_t<T>>(o.dw), g.dweight), tol);
        EXPECT_LT(scaled_error(widen<param_t<T>>(o.db), g.dbias), tol);
        EXPECT_LE(rounding_ratio(widen<T>(o.dxf), gf.dx, u, dx_abs), 1.0);
        // Inference with the running statistics this run produced.
        const auto yi = ref::forward_inference(shape, x, w, b, widen<param_t<T>>(o.rm),
                                               widen<param_t<T>>(o.rv), 1e-5);
        EXPECT_LE(rounding_ratio(widen<T>(o.yi), yi, u, tol * max_abs(yi) + tiny), 1.0);
      }
  }
}

// Same bits for 1 and 2 threads (and from run to run) on every target.
TYPED_TEST(Dispatch, BitwiseIdenticalAcrossThreadCounts) {
  using T = TypeParam;
  const std::vector<Shape> shapes = {{8, 24, 1000, Layout::NCHW},  {8, 24, 1000, Layout::NHWC},
                                     {3, 1, 180001, Layout::NCHW}, {3, 1, 180001, Layout::NHWC},
                                     {4096, 64, 1, Layout::NCHW},  {16, 8, 4095, Layout::NCHW},
                                     {2, 80, 9000, Layout::NHWC},  {48, 1030, 1, Layout::NCHW}};
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    for (const Shape& shape : shapes) {
      if (skip_under_sanitizer<T>(shape)) continue;
      SCOPED_TRACE(std::string(hwy::TargetName(target)) + " " + describe(shape));
      const Inputs<T> in(shape, 99);
      set_num_threads(1);
      const Outputs<T> one = run_all(shape, in);
      set_num_threads(2);
      const Outputs<T> two = run_all(shape, in);
      const Outputs<T> again = run_all(shape, in);
      for (const Outputs<T>* o : {&two, &again}) {
        EXPECT_TRUE(one.y == o->y);
        EXPECT_TRUE(one.mean == o->mean);
        EXPECT_TRUE(one.invstd == o->invstd);
        EXPECT_TRUE(one.rm == o->rm);
        EXPECT_TRUE(one.rv == o->rv);
        EXPECT_TRUE(one.dx == o->dx);
        EXPECT_TRUE(one.dw == o->dw);
        EXPECT_TRUE(one.db == o->db);
        EXPECT_TRUE(one.dxf == o->dxf);
        EXPECT_TRUE(one.yi == o->yi);
      }
    }
  }
}

// Channels at both ends of float's range beside ordinary channels in the
// same work units: values near the largest finite value, whose squares (and
// sums) overflow float but not double, and values 1e-24 apart, whose
// squares fall among float's subnormals (visible with a tiny eps). The
// statistics and y must be finite and match the double reference with the
// ordinary bounds, on every path, target and thread count, and the same
// bits on 1 and 2 threads. The running variance of a huge channel (about
// 1e77) is beyond float: +inf.
template <class T>
class Overflow : public Dispatch<T> {};
using WideRangeTypes = ::testing::Types<float, bfloat16>;
TYPED_TEST_SUITE(Overflow, WideRangeTypes);

TYPED_TEST(Overflow, ChannelsAtTheEndsOfTheRange) {
  using T = TypeParam;
  using P = param_t<T>;
  const double u = unit_roundoff<T>(), tol = compute_tol<T>(), tiny = subnormal_half_spacing<T>();
  // Before any SetSupportedTargetsForTest narrows it.
  const auto targets = hwy::SupportedAndGeneratedTargets();
  uint64_t seed = 9100;
  for (const Shape& shape : path_shapes()) {
    if (skip_under_sanitizer<T>(shape) || shape.m() < 2) continue;
    seed += 10;
    const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
    // Channels 0, 3, ...: +-(1 to 3) * 1e38 (both the sums and the squares
    // overflow); 1, 4, ...: N(0.3, 1) * 1e-3; 2, 5, ...: N(0.3, 1) * 1e-24.
    const auto u01 = random_values(numel, seed, 0.0, 1.0);
    std::vector<double> xd(numel);
    for (size_t i = 0; i < numel; ++i) {
      const int64_t k =
          shape.layout == Layout::NHWC ? int64_t(i) % shape.c : int64_t(i) / shape.s % shape.c;
      const double v = u01[i];
      xd[i] = k % 3 == 0 ? std::copysign(1e38 * (1 + std::min(2.0, std::abs(v))), v)
                         : (k % 3 == 1 ? 1e-3 : 1e-24) * (0.3 + v);
    }
    const auto x = cast<T>(xd);
    const auto w = cast<P>(random_values(c, seed + 2, 1.0, 0.5));
    const auto b = cast<P>(random_values(c, seed + 3));
    // eps far below the tiny channels' variance (about 1e-48).
    const double eps = 0x1p-200;
    const auto want = ref::forward_training(shape, widen<T>(x), widen<P>(w), widen<P>(b), eps);
    const double m = double(shape.m());
    for (int64_t target : targets) {
      std::vector<T> y_one;
      for (int threads : {1, 2}) {
        SCOPED_TRACE(std::string(hwy::TargetName(target)) + " threads=" + std::to_string(threads) +
                     " " + describe(shape));
        hwy::SetSupportedTargetsForTest(target);
        set_num_threads(threads);
        std::vector<T> y(numel);
        std::vector<P> mean(c), invstd(c), rm(c, P(0)), rv(c, P(1));
        Options options;
        options.eps = eps;
        forward_training<T>(shape, x.data(), w.data(), b.data(), y.data(), mean.data(),
                            invstd.data(), rm.data(), rv.data(), options);
        EXPECT_LE(rounding_ratio(widen<T>(y), want.y, u, tol * max_abs(want.y) + tiny), 1.0);
        for (size_t k = 0; k < c; ++k) {
          SCOPED_TRACE("channel " + std::to_string(k));
          // Relative to each channel's own size (the invstd of a huge
          // channel, 1e-39, is subnormal in float: its spacing counts).
          EXPECT_LE(std::abs(double(mean[k]) - want.mean[k]),
                    tol * (std::abs(want.mean[k]) + std::sqrt(want.var[k])));
          EXPECT_LE(std::abs(double(invstd[k]) - want.invstd[k]), tol * want.invstd[k] + 0x1p-149);
          EXPECT_LE(std::abs(double(rm[k]) - 0.1 * want.mean[k]),
                    tol * (std::abs(want.mean[k]) + std::sqrt(want.var[k])));
          const double rv_want = 0.9 + 0.1 * want.var[k] * m / (m - 1);
          if (rv_want > double(std::numeric_limits<P>::max()))
            EXPECT_EQ(double(rv[k]), INFINITY);
          else
            EXPECT_LE(std::abs(double(rv[k]) - rv_want), tol * rv_want);
        }
        if (threads == 1)
          y_one = y;
        else
          EXPECT_TRUE(y == y_one);
      }
    }
  }
}

namespace {
class DispatchFloat : public ::testing::Test {
 protected:
  void TearDown() override {
    hwy::SetSupportedTargetsForTest(0);
    set_num_threads(0);
  }
};
}  // namespace

// (8, 32, 128, 128) NHWC: 131072 values a channel, where long float sums lose
// digits (the issue reports 1e-3 for oneDNN 2.6 and PyTorch 1.13); bnorm's
// blocked sums keep dgamma and dbeta within 1e-6 of the double reference.
TEST_F(DispatchFloat, DgammaAccurateOnLargeNhwc) {
  const Shape shape{8, 32, 128 * 128, Layout::NHWC};
  const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
  const auto x = cast<float>(random_values(numel, 5, 0.5, 2.0));
  // dy correlated with x, as a loss gradient is, and with a mean: dgamma and
  // dbeta are then large sums whose partial sums grow steadily.
  const auto noise = random_values(numel, 6, 0.2, 0.5);
  std::vector<float> dy(numel);
  for (size_t i = 0; i < numel; ++i) dy[i] = float(0.25 * (double(x[i]) - 0.5) + noise[i]);
  std::vector<float> y(numel), mean(c), invstd(c), dw(c), db(c);
  forward_training<float>(shape, x.data(), nullptr, nullptr, y.data(), mean.data(), invstd.data(),
                          nullptr, nullptr);
  backward<float>(shape, dy.data(), x.data(), nullptr, mean.data(), invstd.data(), nullptr,
                  dw.data(), db.data());
  const auto g =
      ref::backward(ref::Method::staged, shape, widen<float>(dy), widen<float>(x), {}, 1e-5);
  // Straight float sums over the 131072 values give 1.0e-5 (dgamma) and
  // 1.4e-5 (dbeta) on these data (scaled by the largest value, as
  // everywhere else); the blocked sums must do ten times better than the
  // 1e-5 the issue asks for.
  EXPECT_LT(scaled_error(widen<float>(dw), g.dweight), 1e-6);
  EXPECT_LT(scaled_error(widen<float>(db), g.dbias), 1e-6);
}

TEST_F(DispatchFloat, ThreadSetting) {
  set_num_threads(2);
  EXPECT_EQ(num_threads(), 2);
  set_num_threads(0);
  EXPECT_GE(num_threads(), 1);
  EXPECT_THROW(set_num_threads(-1), std::invalid_argument);
  try {
    set_num_threads(-3);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("-3"), std::string::npos);
  }
}

}  // namespace bnorm::test
