// The reference against finite differences, and its two derivations (staged
// graph and closed form) against each other.
#include <gtest/gtest.h>

#include "../common.hpp"

namespace bnorm::test {
namespace ref = bnorm::reference;

TEST(Reference, MatchesFiniteDifferences) {
  for (const Shape& shape : sweep_shapes()) {
    if (shape.numel() > 2000) continue;  // O(m^2) per channel
    SCOPED_TRACE(describe(shape));
    const auto x = random_values(size_t(shape.numel()), 1, 0.5, 2.0);
    const auto dy = random_values(size_t(shape.numel()), 2);
    const auto w = random_values(size_t(shape.c), 3, 1.0, 0.5);
    const auto b = random_values(size_t(shape.c), 4);
    const double eps = 1e-3;
    const auto fd = ref::finite_differences(shape, dy, x, w, b, eps);
    const auto invstd = ref::forward_training(shape, x, w, b, eps).invstd;
    for (ref::Method method :
         {ref::Method::staged, ref::Method::closed_form, ref::Method::compact}) {
      SCOPED_TRACE(ref::to_string(method));
      const auto g = ref::backward(method, shape, dy, x, w, eps);
      EXPECT_LT(dx_error(shape, g.dx, fd.dx, dy, w, invstd), 1e-7);
      EXPECT_LT(scaled_error(g.dweight, fd.dweight), 1e-6);
      EXPECT_LT(scaled_error(g.dbias, fd.dbias), 1e-6);
    }
  }
}

TEST(Reference, FrozenMomentsDisagreesWithFiniteDifferences) {
  const Shape shape{4, 2, 3, Layout::NCHW};
  const auto x = random_values(size_t(shape.numel()), 5);
  const auto dy = random_values(size_t(shape.numel()), 6);
  const auto fd = ref::finite_differences(shape, dy, x, {}, {}, 1e-5);
  const auto g = ref::backward(ref::Method::frozen_moments, shape, dy, x, {}, 1e-5);
  EXPECT_GT(scaled_error(g.dx, fd.dx), 0.1);
  // dgamma and dbeta do not depend on the moments' gradient.
  EXPECT_LT(scaled_error(g.dweight, fd.dweight), 1e-6);
  EXPECT_LT(scaled_error(g.dbias, fd.dbias), 1e-6);
}

TEST(Reference, StagedEqualsClosedFormNodeByNode) {
  const auto x = random_values(9, 7, 3.0, 0.7);
  const auto dy = random_values(9, 8);
  const double gamma = 1.7, eps = 1e-5;
  const ref::StagedBackward b = ref::staged_backward(ref::staged_forward(x, gamma, 0.3, eps), dy);
  const ref::ClosedForm cf = ref::closed_form(x, dy, gamma, eps);
  EXPECT_LT(scaled_error(b.dxhat, cf.dxhat), 1e-13);
  EXPECT_NEAR(b.dvar, cf.dvar, 1e-12 * std::abs(cf.dvar));
  EXPECT_NEAR(b.dmu, cf.dmu, 1e-12 * std::abs(cf.dmu));
  EXPECT_LT(scaled_error(b.dx, cf.dx), 1e-12);
  EXPECT_LT(scaled_error(b.dx, cf.dx_compact), 1e-12);
  EXPECT_NEAR(b.dgamma, cf.dgamma, 1e-12 * std::abs(cf.dgamma));
  EXPECT_NEAR(b.dbeta, cf.dbeta, 1e-12 * std::abs(cf.dbeta));
}

TEST(Reference, StagedForwardNodes) {
  const std::vector<double> x{1, 2, 3, 6};
  const auto f = ref::staged_forward(x, 2.0, 0.5, 0.0);
  EXPECT_DOUBLE_EQ(f.mu, 3.0);
  EXPECT_DOUBLE_EQ(f.var, (4 + 1 + 0 + 9) / 4.0);  // biased: 1/m
  EXPECT_DOUBLE_EQ(f.ivar, 1 / std::sqrt(3.5));
  EXPECT_DOUBLE_EQ(f.y[3], 2.0 * 3 / std::sqrt(3.5) + 0.5);
}

// Per channel, sum_i dx_i = 0 and sum_i dx_i * x_hat_i = 0: the true gradient
// cannot shift the batch mean or scale the batch spread, which the
// normalization would undo anyway. The second holds up to eps: exactly,
// sum_i dx_i x_hat_i = gamma * invstd * sum_i(dy_i x_hat_i) * eps / (var + eps),
// because sum_i x_hat_i^2 = m * var / (var + eps). The frozen-moments gradient
// breaks both.
TEST(Reference, GradientInvariants) {
  const Shape shape{6, 3, 5, Layout::NHWC};
  const auto x = random_values(size_t(shape.numel()), 9, 1.0, 0.05);
  const auto dy = random_values(size_t(shape.numel()), 10, 0.4, 1.0);
  const auto w = random_values(size_t(shape.c), 11, 1.0, 0.3);
  const double eps = 1e-3;  // large next to var = 0.0025, so the eps term shows
  const auto fwd = ref::forward_training(shape, x, {}, {}, eps);  // y = x_hat
  for (ref::Method method : {ref::Method::staged, ref::Method::closed_form, ref::Method::compact,
                             ref::Method::frozen_moments}) {
    const auto g = ref::backward(method, shape, dy, x, w, eps);
    for (int64_t k = 0; k < shape.c; ++k) {
      const auto dx = ref::gather_channel(shape, g.dx, k);
      const auto xhat = ref::gather_channel(shape, fwd.y, k);
      const auto dyk = ref::gather_channel(shape, dy, k);
      const double var = fwd.var[size_t(k)], invstd = fwd.invstd[size_t(k)];
      double sum = 0, dot = 0, size = 0, dy_xhat = 0;
      for (size_t i = 0; i < dx.size(); ++i) {
        sum += dx[i];
        dot += dx[i] * xhat[i];
        size += std::abs(dx[i]);
        dy_xhat += dyk[i] * xhat[i];
      }
      const double eps_term = w[size_t(k)] * invstd * dy_xhat * eps / (var + eps);
      SCOPED_TRACE(std::string(ref::to_string(method)) + " channel " + std::to_string(k));
      if (method == ref::Method::frozen_moments) {
        EXPECT_GT(std::abs(sum), 1e-2 * size);
        EXPECT_GT(std::abs(dot - eps_term), 1e-2 * size);
      } else {
        EXPECT_LT(std::abs(sum), 1e-12 * size);
        EXPECT_LT(std::abs(dot - eps_term), 1e-12 * size);
        EXPECT_GT(std::abs(eps_term), 1e-4 * size);  // the eps term is real, not noise
      }
    }
  }
}

TEST(Reference, DerivationsAgreeOverShapes) {
  for (const Shape& shape : sweep_shapes()) {
    SCOPED_TRACE(describe(shape));
    const auto x = random_values(size_t(shape.numel()), 12, -1.0, 3.0);
    const auto dy = random_values(size_t(shape.numel()), 13);
    const auto w = random_values(size_t(shape.c), 14, 1.0, 0.5);
    const auto invstd = ref::forward_training(shape, x, w, {}, 1e-5).invstd;
    const auto staged = ref::backward(ref::Method::staged, shape, dy, x, w, 1e-5);
    for (ref::Method method : {ref::Method::closed_form, ref::Method::compact}) {
      const auto g = ref::backward(method, shape, dy, x, w, 1e-5);
      EXPECT_LT(dx_error(shape, g.dx, staged.dx, dy, w, invstd), 1e-12) << ref::to_string(method);
      EXPECT_LT(scaled_error(g.dweight, staged.dweight), 1e-12);
      EXPECT_LT(scaled_error(g.dbias, staged.dbias), 1e-12);
    }
  }
}

}  // namespace bnorm::test
