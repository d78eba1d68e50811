// Ghost batch norm against batch norm applied group by group (the reference
// for the values, the core's forward_training for the order of the running
// statistics updates), and its errors.
#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>

#include "common.hpp"

namespace bnorm::test {
namespace ref = bnorm::reference;
namespace {

// Samples [i0, i1) of a tensor: contiguous in both layouts.
template <class T>
std::vector<T> slice(const std::vector<T>& t, const Shape& shape, int64_t i0, int64_t i1) {
  const int64_t per = shape.c * shape.s;
  return std::vector<T>(t.begin() + i0 * per, t.begin() + i1 * per);
}

}  // namespace

template <class T>
class Ghost : public ::testing::Test {
 protected:
  static double tol() { return std::is_same_v<T, float> ? 2e-5 : 1e-12; }
};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Ghost, Types);

TYPED_TEST(Ghost, EqualsBatchNormGroupByGroup) {
  using T = TypeParam;
  uint64_t seed = 300;
  // (n, virtual batch): whole groups, a short last group, one group (vbs >= n).
  const int64_t splits[][2] = {{12, 4}, {7, 3}, {10, 4}, {5, 8}, {9, 2}};
  for (Layout layout : {Layout::NCHW, Layout::NHWC})
    for (const auto& sp : splits)
      for (int64_t s : {1, 5}) {
        const Shape shape{sp[0], 3, s, layout};
        const int64_t vbs = sp[1];
        if ((shape.n % vbs) * s == 1) continue;  // a last group of one value: an error
        SCOPED_TRACE(describe(shape) + " vbs=" + std::to_string(vbs));
        const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
        const auto x = cast<T>(random_values(numel, ++seed, 0.5, 2.0));
        const auto dy = cast<T>(random_values(numel, ++seed));
        const auto w = cast<T>(random_values(c, ++seed, 1.0, 0.5));
        const auto b = cast<T>(random_values(c, ++seed));
        const int64_t groups = ghost_groups(shape.n, vbs);
        ASSERT_EQ(groups, (shape.n + vbs - 1) / vbs);
        Options opt;
        opt.momentum = 0.2;
        std::vector<T> y(numel), mean(groups * c), invstd(groups * c), rm(c, T(0.5)), rv(c, T(2.0)),
            dx(numel), dw(c), db(c);
        ghost_forward_training<T>(shape, vbs, x.data(), w.data(), b.data(), y.data(), mean.data(),
                                  invstd.data(), rm.data(), rv.data(), opt);
        ghost_backward<T>(shape, vbs, dy.data(), x.data(), w.data(), mean.data(), invstd.data(),
                          dx.data(), dw.data(), db.data());
        // The oracle: the reference on each group, the running statistics
        // updated group after group in double.
        std::vector<double> want_rm(c, 0.5), want_rv(c, 2.0), want_dw(c, 0.0), want_db(c, 0.0);
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i0 = g * vbs, i1 = std::min(shape.n, i0 + vbs);
          const Shape part{i1 - i0, shape.c, s, layout};
          const double m = double(part.m());
          const auto xg = widen<T>(slice(x, shape, i0, i1));
          const auto dyg = widen<T>(slice(dy, shape, i0, i1));
          const auto want = ref::forward_training(part, xg, widen<T>(w), widen<T>(b), 1e-5);
          EXPECT_LT(scaled_error(widen<T>(slice(y, shape, i0, i1)), want.y), this->tol());
          const std::vector<T> mg(mean.begin() + g * c, mean.begin() + (g + 1) * c);
          const std::vector<T> sg(invstd.begin() + g * c, invstd.begin() + (g + 1) * c);
          EXPECT_LT(scaled_error(widen<T>(mg), want.mean), this->tol());
          EXPECT_LT(scaled_error(widen<T>(sg), want.invstd), this->tol());
          for (size_t k = 0; k < c; ++k) {
            want_rm[k] = 0.8 * want_rm[k] + 0.2 * want.mean[k];
            want_rv[k] = 0.8 * want_rv[k] + 0.2 * want.var[k] * m / (m - 1);
          }
          const auto gw = ref::backward(ref::Method::compact, part, dyg, xg, widen<T>(w), 1e-5);
          EXPECT_LT(dx_error(part, widen<T>(slice(dx, shape, i0, i1)), gw.dx, dyg, widen<T>(w),
                             want.invstd),
                    10 * this->tol());
          for (size_t k = 0; k < c; ++k) {
            want_dw[k] += gw.dweight[k];
            want_db[k] += gw.dbias[k];
          }
        }
        EXPECT_LT(scaled_error(widen<T>(rm), want_rm), this->tol());
        EXPECT_LT(scaled_error(widen<T>(rv), want_rv), this->tol());
        EXPECT_LT(scaled_error(widen<T>(dw), want_dw), 10 * this->tol());
        EXPECT_LT(scaled_error(widen<T>(db), want_db), 10 * this->tol());

        // And bit for bit what the core's batch norm gives applied to the
        // groups one after another (the same running statistics carried).
        std::vector<T> rm2(c, T(0.5)), rv2(c, T(2.0));
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i0 = g * vbs, i1 = std::min(shape.n, i0 + vbs);
          const Shape part{i1 - i0, shape.c, s, layout};
          const auto xg = slice(x, shape, i0, i1);
          std::vector<T> yg(xg.size());
          forward_training<T>(part, xg.data(), w.data(), b.data(), yg.data(), nullptr, nullptr,
                              rm2.data(), rv2.data(), opt);
          EXPECT_EQ(0,
                    std::memcmp(yg.data(), slice(y, shape, i0, i1).data(), yg.size() * sizeof(T)));
        }
        EXPECT_EQ(0, std::memcmp(rm.data(), rm2.data(), c * sizeof(T)));
        EXPECT_EQ(0, std::memcmp(rv.data(), rv2.data(), c * sizeof(T)));
      }
}

TEST(Ghost, CumulativeAverageCountsGroups) {
  // momentum = nullopt: group g is batch num_batches_tracked + g, so after a
  // first call with 3 groups (from count 1) the running mean is the plain
  // average of the groups' means.
  const Shape shape{6, 2, 3, Layout::NHWC};
  const auto x = random_values(size_t(shape.numel()), 5, 1.0, 2.0);
  std::vector<double> y(x.size()), rm(2, 7.0), rv(2, 7.0);
  Options opt;
  opt.momentum = std::nullopt;
  opt.num_batches_tracked = 1;
  ghost_forward_training<double>(shape, 2, x.data(), nullptr, nullptr, y.data(), nullptr, nullptr,
                                 rm.data(), rv.data(), opt);
  std::vector<double> avg(2, 0.0);
  for (int64_t g = 0; g < 3; ++g) {
    const Shape part{2, 2, 3, Layout::NHWC};
    const auto want = ref::forward_training(part, slice(x, shape, 2 * g, 2 * g + 2), {}, {}, 1e-5);
    for (size_t k = 0; k < 2; ++k) avg[k] += want.mean[k] / 3;
  }
  EXPECT_NEAR(rm[0], avg[0], 1e-13);
  EXPECT_NEAR(rm[1], avg[1], 1e-13);
}

TEST(Ghost, LayerTrainsGroupwiseAndEvaluatesWithRunningStats) {
  const Shape shape{8, 3, 2, Layout::NCHW};
  BatchNorm<double> layer(3, 1e-5, 0.1);
  EXPECT_THROW(layer.set_virtual_batch_size(1), std::invalid_argument);
  EXPECT_THROW(layer.set_virtual_batch_size(-4), std::invalid_argument);
  layer.set_virtual_batch_size(4);
  const auto x = random_values(size_t(shape.numel()), 9, 0.0, 1.5);
  const auto dy = random_values(size_t(shape.numel()), 10);
  const auto y = layer.forward(shape, x);
  EXPECT_EQ(layer.num_batches_tracked(), 2);
  std::vector<double> want_y(x.size()), mean(6), invstd(6), rm(3, 0.0), rv(3, 1.0), dx(x.size()),
      dw(3), db(3);
  const std::vector<double> w(3, 1.0), b(3, 0.0);
  ghost_forward_training<double>(shape, 4, x.data(), w.data(), b.data(), want_y.data(), mean.data(),
                                 invstd.data(), rm.data(), rv.data(), {});
  EXPECT_EQ(y, want_y);
  EXPECT_EQ(std::vector<double>(layer.running_mean().begin(), layer.running_mean().end()), rm);
  const auto g = layer.backward(dy);
  ghost_backward<double>(shape, 4, dy.data(), x.data(), w.data(), mean.data(), invstd.data(),
                         dx.data(), dw.data(), db.data());
  EXPECT_EQ(g.dx, dx);
  EXPECT_EQ(g.dweight, dw);
  layer.eval();  // eval ignores the groups
  const auto ye = layer.forward(shape, x);
  const auto want_e = ref::forward_inference(shape, x, {}, {}, rm, rv, 1e-5);
  EXPECT_LT(scaled_error(ye, want_e), 1e-14);
}

TEST(GhostErrors, BadVirtualBatchOrLastGroupOfOneValueWritesNothing) {
  const double sentinel = 42.0;
  struct Case {
    Shape shape;
    int64_t vbs;
    const char* expect;
  };
  const Case cases[] = {
      {{6, 2, 3, Layout::NCHW}, 1, "virtual_batch_size must be >= 2, got 1"},
      {{6, 2, 3, Layout::NCHW}, 0, "virtual_batch_size must be >= 2, got 0"},
      {{6, 2, 3, Layout::NHWC}, -3, "virtual_batch_size must be >= 2, got -3"},
      {{7, 2, 1, Layout::NCHW}, 3, "the last group holds 1 sample(s) of n = 7"},
      {{9, 2, 1, Layout::NHWC}, 4, "the last group holds 1 sample(s) of n = 9"},
  };
  for (const Case& cs : cases) {
    SCOPED_TRACE(cs.expect);
    const size_t numel = size_t(cs.shape.numel());
    const auto x = random_values(numel, 3);
    std::vector<double> y(numel, sentinel), mean(20, sentinel), invstd(20, sentinel), rm(2, 0.5),
        rv(2, 2.0);
    try {
      ghost_forward_training<double>(cs.shape, cs.vbs, x.data(), nullptr, nullptr, y.data(),
                                     mean.data(), invstd.data(), rm.data(), rv.data());
      ADD_FAILURE() << "no exception";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(cs.expect), std::string::npos) << e.what();
    }
    EXPECT_EQ(y, std::vector<double>(numel, sentinel));
    EXPECT_EQ(mean, std::vector<double>(20, sentinel));
    EXPECT_EQ(rm, std::vector<double>(2, 0.5));
    EXPECT_EQ(rv, std::vector<double>(2, 2.0));
    std::vector<double> dx(numel, sentinel), dw(2, sentinel);
    const std::vector<double> ones(20, 1.0);
    EXPECT_THROW(ghost_backward<double>(cs.shape, cs.vbs, x.data(), x.data(), nullptr, ones.data(),
                                        ones.data(), dx.data(), dw.data(), nullptr),
                 std::invalid_argument);
    EXPECT_EQ(dx, std::vector<double>(numel, sentinel));
    EXPECT_EQ(dw, std::vector<double>(2, sentinel));
  }
}

}  // namespace bnorm::test
