// The BatchNorm layer class against the reference and the free functions.
#include <gtest/gtest.h>

#include "common.hpp"

namespace bnorm::test {
namespace ref = bnorm::reference;

TEST(Layer, TrainStepMatchesReferenceAndTracksStatistics) {
  const Shape shape{8, 4, 6, Layout::NHWC};
  BatchNorm<double> layer(4, 1e-5, std::nullopt);
  for (int64_t k = 0; k < 4; ++k) {
    layer.weight()[size_t(k)] = 1.0 + 0.25 * double(k);
    layer.bias()[size_t(k)] = -0.5 * double(k);
  }
  const std::vector<double> w(layer.weight().begin(), layer.weight().end());
  const std::vector<double> b(layer.bias().begin(), layer.bias().end());
  std::vector<std::vector<double>> means;
  std::vector<std::vector<double>> unbiased;
  for (int step = 0; step < 3; ++step) {
    const auto x = random_values(size_t(shape.numel()), 10 + step, step, 1 + step);
    const auto dy = random_values(size_t(shape.numel()), 20 + step);
    const auto y = layer.forward(shape, x);
    const auto want = ref::forward_training(shape, x, w, b, 1e-5);
    EXPECT_LT(scaled_error(y, want.y), 1e-12);
    const auto g = layer.backward(dy);
    const auto gw = ref::backward(ref::Method::compact, shape, dy, x, w, 1e-5);
    EXPECT_LT(scaled_error(g.dx, gw.dx), 1e-11);
    EXPECT_LT(scaled_error(g.dweight, gw.dweight), 1e-12);
    EXPECT_LT(scaled_error(g.dbias, gw.dbias), 1e-12);
    means.push_back(want.mean);
    std::vector<double> u;
    for (double v : want.var) u.push_back(v * 48.0 / 47.0);
    unbiased.push_back(u);
  }
  EXPECT_EQ(layer.num_batches_tracked(), 3);
  // Cumulative average: plain mean over the three batches (starting values
  // are weighted out by the factor 1 at the first step).
  for (size_t k = 0; k < 4; ++k) {
    EXPECT_NEAR(layer.running_mean()[k], (means[0][k] + means[1][k] + means[2][k]) / 3, 1e-12);
    EXPECT_NEAR(layer.running_var()[k], (unbiased[0][k] + unbiased[1][k] + unbiased[2][k]) / 3,
                1e-12);
  }
}

TEST(Layer, EvalUsesRunningStatisticsAndConstantMoments) {
  const Shape shape{5, 3, 4, Layout::NCHW};
  BatchNorm<float> layer(3, 1e-3, 0.5);
  const auto x0 = cast<float>(random_values(60, 1, 2.0, 3.0));
  (void)layer.forward(shape, x0);
  layer.eval();
  EXPECT_FALSE(layer.training());
  const auto x = cast<float>(random_values(60, 2));
  const auto dy = cast<float>(random_values(60, 3));
  const auto y = layer.forward(shape, x);
  const std::vector<double> rm(layer.running_mean().begin(), layer.running_mean().end());
  const std::vector<double> rv(layer.running_var().begin(), layer.running_var().end());
  const auto want = ref::forward_inference(shape, widen<float>(x), {}, {}, rm, rv, 1e-3);
  EXPECT_LT(scaled_error(widen<float>(y), want), 1e-6);
  EXPECT_EQ(layer.num_batches_tracked(), 1);  // eval does not count
  const auto g = layer.backward(dy);
  for (size_t i = 0; i < 60; ++i) {
    const size_t k = i / 4 % 3;
    EXPECT_NEAR(g.dx[i], dy[i] / std::sqrt(rv[k] + 1e-3), 1e-5);
  }
}

TEST(Layer, NoAffineNoTracking) {
  const Shape shape{6, 2, 1, Layout::NCHW};
  BatchNorm<double> layer(2, 1e-5, 0.1, false, false);
  EXPECT_TRUE(layer.weight().empty());
  EXPECT_TRUE(layer.running_mean().empty());
  layer.eval();  // without running statistics, eval still normalizes by the batch
  const auto x = random_values(12, 5);
  const auto y = layer.forward(shape, x);
  EXPECT_LT(scaled_error(y, ref::forward_training(shape, x, {}, {}, 1e-5).y), 1e-12);
  const auto g = layer.backward(random_values(12, 6));
  EXPECT_TRUE(g.dweight.empty());
  EXPECT_EQ(g.dx.size(), 12u);
}

}  // namespace bnorm::test
