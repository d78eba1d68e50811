// The float fast path on every SIMD target this binary carries and this CPU
// runs (hwy::SetSupportedTargetsForTest pins one at a time), with 1 and 2
// threads, against the double-precision reference; bitwise determinism
// across thread counts; dgamma accuracy where straight float sums fail.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <string>

#include "../common.hpp"

namespace bnorm::test {
namespace ref = bnorm::reference;

namespace {

// Restores the CPU's own targets and OpenMP's thread count after each test.
class Dispatch : public ::testing::Test {
 protected:
  void TearDown() override {
    hwy::SetSupportedTargetsForTest(0);
    set_num_threads(0);
  }
};

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
  // Channel-column units over rows of a page or more (statistics down the
  // columns, y row by row), with a scalar channel tail.
  shapes.push_back({48, 1030, 1, Layout::NCHW});
  shapes.push_back({3, 1100, 7, Layout::NHWC});
  return shapes;
}

struct Outputs {
  std::vector<float> y, mean, invstd, rm, rv, dx, dw, db, yi, dxf;
};

Outputs run_all(const Shape& shape, uint64_t seed) {
  const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
  const auto x = cast<float>(random_values(numel, seed, 0.3, 1.5));
  const auto dy = cast<float>(random_values(numel, seed + 1));
  const auto w = cast<float>(random_values(c, seed + 2, 1.0, 0.5));
  const auto b = cast<float>(random_values(c, seed + 3));
  Outputs o;
  o.y.resize(numel);
  o.yi.resize(numel);
  o.dx.resize(numel);
  o.dxf.resize(numel);
  o.mean.resize(c);
  o.invstd.resize(c);
  o.dw.resize(c);
  o.db.resize(c);
  o.rm.assign(c, 0.5f);
  o.rv.assign(c, 2.0f);
  forward_training<float>(shape, x.data(), w.data(), b.data(), o.y.data(), o.mean.data(),
                          o.invstd.data(), o.rm.data(), o.rv.data());
  backward<float>(shape, dy.data(), x.data(), w.data(), o.mean.data(), o.invstd.data(), o.dx.data(),
                  o.dw.data(), o.db.data());
  backward_frozen_moments<float>(shape, dy.data(), x.data(), w.data(), o.mean.data(),
                                 o.invstd.data(), o.dxf.data(), nullptr, nullptr);
  forward_inference<float>(shape, x.data(), w.data(), b.data(), o.rm.data(), o.rv.data(),
                           o.yi.data(), 1e-5);
  return o;
}

}  // namespace

TEST_F(Dispatch, EveryTargetAndThreadCountMatchesReference) {
  const auto targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  uint64_t seed = 7000;
  for (const Shape& shape : path_shapes()) {
    seed += 10;
    const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
    const auto x = widen<float>(cast<float>(random_values(numel, seed, 0.3, 1.5)));
    const auto dy = widen<float>(cast<float>(random_values(numel, seed + 1)));
    const auto w = widen<float>(cast<float>(random_values(c, seed + 2, 1.0, 0.5)));
    const auto b = widen<float>(cast<float>(random_values(c, seed + 3)));
    const auto want = ref::forward_training(shape, x, w, b, 1e-5);
    const auto g = ref::backward(ref::Method::staged, shape, dy, x, w, 1e-5);
    const auto gf = ref::backward(ref::Method::frozen_moments, shape, dy, x, w, 1e-5);
    const double m = double(shape.m());
    std::vector<double> want_rm(c), want_rv(c);
    for (size_t k = 0; k < c; ++k) {
      want_rm[k] = 0.9 * 0.5 + 0.1 * want.mean[k];
      want_rv[k] = 0.9 * 2.0 + 0.1 * want.var[k] * m / (m - 1);
    }
    for (int64_t target : targets)
      for (int threads : {1, 2}) {
        SCOPED_TRACE(std::string(hwy::TargetName(target)) + " threads=" + std::to_string(threads) +
                     " " + describe(shape));
        hwy::SetSupportedTargetsForTest(target);
        set_num_threads(threads);
        const Outputs o = run_all(shape, seed);
        EXPECT_LT(scaled_error(widen<float>(o.y), want.y), 2e-5);
        EXPECT_LT(scaled_error(widen<float>(o.mean), want.mean), 2e-5);
        EXPECT_LT(scaled_error(widen<float>(o.invstd), want.invstd), 2e-5);
        EXPECT_LT(scaled_error(widen<float>(o.rm), want_rm), 2e-5);
        EXPECT_LT(scaled_error(widen<float>(o.rv), want_rv), 2e-5);
        EXPECT_LT(dx_error(shape, widen<float>(o.dx), g.dx, dy, w, want.invstd), 2e-4);
        EXPECT_LT(scaled_error(widen<float>(o.dw), g.dweight), 2e-5);
        EXPECT_LT(scaled_error(widen<float>(o.db), g.dbias), 2e-5);
        EXPECT_LT(scaled_error(widen<float>(o.dxf), gf.dx), 2e-5);
        // Inference with the running statistics this run produced.
        const auto yi =
            ref::forward_inference(shape, x, w, b, widen<float>(o.rm), widen<float>(o.rv), 1e-5);
        EXPECT_LT(scaled_error(widen<float>(o.yi), yi), 2e-5);
      }
  }
}

// Same bits for 1 and 2 threads (and from run to run) on every target.
TEST_F(Dispatch, BitwiseIdenticalAcrossThreadCounts) {
  const std::vector<Shape> shapes = {{8, 24, 1000, Layout::NCHW},  {8, 24, 1000, Layout::NHWC},
                                     {3, 1, 180001, Layout::NCHW}, {3, 1, 180001, Layout::NHWC},
                                     {4096, 64, 1, Layout::NCHW},  {16, 8, 4095, Layout::NCHW}};
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    for (const Shape& shape : shapes) {
      SCOPED_TRACE(std::string(hwy::TargetName(target)) + " " + describe(shape));
      set_num_threads(1);
      const Outputs one = run_all(shape, 99);
      set_num_threads(2);
      const Outputs two = run_all(shape, 99);
      const Outputs again = run_all(shape, 99);
      for (const Outputs* o : {&two, &again}) {
        EXPECT_EQ(one.y, o->y);
        EXPECT_EQ(one.mean, o->mean);
        EXPECT_EQ(one.invstd, o->invstd);
        EXPECT_EQ(one.rm, o->rm);
        EXPECT_EQ(one.rv, o->rv);
        EXPECT_EQ(one.dx, o->dx);
        EXPECT_EQ(one.dw, o->dw);
        EXPECT_EQ(one.db, o->db);
        EXPECT_EQ(one.dxf, o->dxf);
        EXPECT_EQ(one.yi, o->yi);
      }
    }
  }
}

// (8, 32, 128, 128) NHWC: 131072 values a channel, where long float sums lose
// digits (the issue reports 1e-3 for oneDNN 2.6 and PyTorch 1.13); bnorm's
// blocked sums keep dgamma and dbeta within 1e-6 of the double reference.
TEST_F(Dispatch, DgammaAccurateOnLargeNhwc) {
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

TEST_F(Dispatch, ThreadSetting) {
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
