// The running-variance convention (Options::unbiased_running_var) against
// hand-computed values, in the free functions and the layer class.
#include <gtest/gtest.h>

#include "common.hpp"

namespace bnorm::test {

template <class T>
class Conventions : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Conventions, Types);

TYPED_TEST(Conventions, RunningVarByHand) {
  using T = TypeParam;
  // Channel 0 holds {1, 2, 3, 6}: mean 3, biased var 14/4 = 3.5, unbiased
  // 14/3. Channel 1 holds {0, 0, 4, 4}: mean 2, biased var 4, unbiased 16/3.
  // Laid out as n = 2, s = 2 in both layouts.
  const std::vector<T> nchw{1, 2, 0, 0, 3, 6, 4, 4};
  const std::vector<T> nhwc{1, 0, 2, 0, 3, 4, 6, 4};
  for (Layout layout : {Layout::NCHW, Layout::NHWC})
    for (bool unbiased : {true, false}) {
      SCOPED_TRACE(std::string(layout == Layout::NCHW ? "NCHW" : "NHWC") +
                   (unbiased ? " unbiased" : " biased"));
      const Shape shape{2, 2, 2, layout};
      const auto& x = layout == Layout::NCHW ? nchw : nhwc;
      std::vector<T> y(8), rm{T(1), T(-1)}, rv{T(1), T(2)};
      Options opt;
      opt.momentum = 0.25;
      opt.unbiased_running_var = unbiased;
      forward_training<T>(shape, x.data(), nullptr, nullptr, y.data(), nullptr, nullptr, rm.data(),
                          rv.data(), opt);
      const double v0 = unbiased ? 14.0 / 3.0 : 3.5, v1 = unbiased ? 16.0 / 3.0 : 4.0;
      const double tol = std::is_same_v<T, float> ? 4e-7 : 1e-15;
      EXPECT_NEAR(double(rm[0]), 0.75 * 1 + 0.25 * 3, tol);
      EXPECT_NEAR(double(rm[1]), 0.75 * -1 + 0.25 * 2, tol);
      EXPECT_NEAR(double(rv[0]), 0.75 * 1 + 0.25 * v0, tol * 2);
      EXPECT_NEAR(double(rv[1]), 0.75 * 2 + 0.25 * v1, tol * 2);
      // Normalization uses the biased variance either way: y of the value 6
      // is (6 - 3) / sqrt(3.5 + eps).
      const size_t at6 = layout == Layout::NCHW ? 5 : 6;
      EXPECT_NEAR(double(y[at6]), 3.0 / std::sqrt(3.5 + 1e-5), 8 * tol);
    }
}

TEST(Conventions, LayerHonoursTheSetting) {
  const Shape shape{4, 1, 1, Layout::NCHW};
  const std::vector<double> x{1, 2, 3, 6};
  BatchNorm<double> layer(1, 1e-5, 0.1);
  EXPECT_TRUE(layer.unbiased_running_var());
  layer.set_unbiased_running_var(false);
  (void)layer.forward(shape, x);
  EXPECT_NEAR(layer.running_var()[0], 0.9 + 0.1 * 3.5, 1e-15);
  layer.set_unbiased_running_var(true);
  (void)layer.forward(shape, x);
  EXPECT_NEAR(layer.running_var()[0], 0.9 * (0.9 + 0.35) + 0.1 * 14.0 / 3.0, 1e-15);
}

}  // namespace bnorm::test
