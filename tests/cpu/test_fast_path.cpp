// The fast path (float and double) against the double-precision reference.
#include <gtest/gtest.h>

#include <limits>

#include "../common.hpp"

namespace bnorm::test {
namespace ref = bnorm::reference;

template <class T>
class FastPath : public ::testing::Test {
 protected:
  static double tol() { return std::is_same_v<T, float> ? 2e-5 : 1e-12; }
};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(FastPath, Types);

TYPED_TEST(FastPath, ForwardTrainingBackwardMatchReference) {
  using T = TypeParam;
  uint64_t seed = 100;
  for (const Shape& shape : sweep_shapes())
    for (bool affine : {true, false})
      for (bool track : {true, false}) {
        SCOPED_TRACE(describe(shape) + (affine ? " affine" : "") + (track ? " track" : ""));
        const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
        const auto xd = random_values(numel, ++seed, 0.3, 1.5);
        const auto dyd = random_values(numel, ++seed);
        const auto wd = affine ? random_values(c, ++seed, 1.0, 0.5) : std::vector<double>{};
        const auto bd = affine ? random_values(c, ++seed) : std::vector<double>{};
        const auto x = cast<T>(xd), dy = cast<T>(dyd), w = cast<T>(wd), b = cast<T>(bd);
        const auto xr = widen<T>(x);  // the reference sees exactly the rounded input
        const double eps = 1e-5;
        std::vector<T> y(numel), mean(c), invstd(c), rm(c, T(0.5)), rv(c, T(2.0));
        Options opt;
        opt.eps = eps;
        forward_training<T>(shape, x.data(), affine ? w.data() : nullptr,
                            affine ? b.data() : nullptr, y.data(), mean.data(), invstd.data(),
                            track ? rm.data() : nullptr, track ? rv.data() : nullptr, opt);
        const auto want = ref::forward_training(shape, xr, widen<T>(w), widen<T>(b), eps);
        EXPECT_LT(scaled_error(widen<T>(y), want.y), this->tol());
        EXPECT_LT(scaled_error(widen<T>(mean), want.mean), this->tol());
        EXPECT_LT(scaled_error(widen<T>(invstd), want.invstd), this->tol());
        if (track) {
          const double m = double(shape.m());
          std::vector<double> want_rm(c), want_rv(c);
          for (size_t k = 0; k < c; ++k) {
            want_rm[k] = 0.9 * 0.5 + 0.1 * want.mean[k];
            want_rv[k] = 0.9 * 2.0 + 0.1 * want.var[k] * m / (m - 1);
          }
          EXPECT_LT(scaled_error(widen<T>(rm), want_rm), this->tol());
          EXPECT_LT(scaled_error(widen<T>(rv), want_rv), this->tol());
        }

        std::vector<T> dx(numel), dw(c), db(c);
        backward<T>(shape, dy.data(), x.data(), affine ? w.data() : nullptr, mean.data(),
                    invstd.data(), dx.data(), dw.data(), db.data());
        const auto g =
            ref::backward(ref::Method::staged, shape, widen<T>(dy), xr, widen<T>(w), eps);
        EXPECT_LT(dx_error(shape, widen<T>(dx), g.dx, widen<T>(dy), widen<T>(w), want.invstd),
                  10 * this->tol());
        EXPECT_LT(scaled_error(widen<T>(dw), g.dweight), this->tol() * 10);
        EXPECT_LT(scaled_error(widen<T>(db), g.dbias), this->tol() * 10);

        std::vector<T> dxf(numel);
        backward_frozen_moments<T>(shape, dy.data(), x.data(), affine ? w.data() : nullptr,
                                   mean.data(), invstd.data(), dxf.data(), nullptr, nullptr);
        const auto gf =
            ref::backward(ref::Method::frozen_moments, shape, widen<T>(dy), xr, widen<T>(w), eps);
        EXPECT_LT(scaled_error(widen<T>(dxf), gf.dx), 10 * this->tol());
      }
}

TYPED_TEST(FastPath, ForwardInferenceMatchesReference) {
  using T = TypeParam;
  uint64_t seed = 500;
  for (const Shape& shape : sweep_shapes()) {
    SCOPED_TRACE(describe(shape));
    const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
    const auto x = cast<T>(random_values(numel, ++seed, 1.0, 2.0));
    const auto w = cast<T>(random_values(c, ++seed)), b = cast<T>(random_values(c, ++seed));
    const auto rm = cast<T>(random_values(c, ++seed));
    auto rv = cast<T>(random_values(c, ++seed));
    for (T& v : rv) v = std::abs(v) + T(0.1);
    std::vector<T> y(numel);
    forward_inference<T>(shape, x.data(), w.data(), b.data(), rm.data(), rv.data(), y.data(), 1e-3);
    const auto want = ref::forward_inference(shape, widen<T>(x), widen<T>(w), widen<T>(b),
                                             widen<T>(rm), widen<T>(rv), 1e-3);
    EXPECT_LT(scaled_error(widen<T>(y), want), this->tol());
  }
}

TYPED_TEST(FastPath, BackwardOutputsAreOptional) {
  using T = TypeParam;
  const Shape shape{3, 4, 5, Layout::NHWC};
  const auto x = cast<T>(random_values(60, 1)), dy = cast<T>(random_values(60, 2));
  std::vector<T> y(60), mean(4), invstd(4), dx(60), dw(4), db(4), dx2(60), dw2(4, T(7)), db2(4);
  forward_training<T>(shape, x.data(), nullptr, nullptr, y.data(), mean.data(), invstd.data(),
                      nullptr, nullptr);
  backward<T>(shape, dy.data(), x.data(), nullptr, mean.data(), invstd.data(), dx.data(), dw.data(),
              db.data());
  backward<T>(shape, dy.data(), x.data(), nullptr, mean.data(), invstd.data(), dx2.data(), nullptr,
              nullptr);
  EXPECT_EQ(dx, dx2);
  backward<T>(shape, dy.data(), x.data(), nullptr, mean.data(), invstd.data(), nullptr, nullptr,
              db2.data());
  EXPECT_EQ(db, db2);
  EXPECT_EQ(dw2, std::vector<T>(4, T(7)));  // not asked for, not written
}

// Running statistics after several steps, computed by hand from the batch
// moments: exponential average with momentum 0.1, cumulative average with
// momentum nullopt (factor 1/t at step t).
TYPED_TEST(FastPath, RunningStatisticsOverSteps) {
  using T = TypeParam;
  const Shape shape{4, 2, 3, Layout::NCHW};
  for (bool cumulative : {false, true}) {
    std::vector<T> rm(2, T(0)), rv(2, T(1));
    std::vector<double> want_rm(2, 0.0), want_rv(2, 1.0);
    for (int step = 1; step <= 5; ++step) {
      const auto x = cast<T>(random_values(24, 1000 + step, step * 0.5, 1.0 + step));
      std::vector<T> y(24);
      Options opt;
      if (cumulative) opt.momentum = std::nullopt;
      opt.num_batches_tracked = step;
      forward_training<T>(shape, x.data(), nullptr, nullptr, y.data(), nullptr, nullptr, rm.data(),
                          rv.data(), opt);
      for (int64_t k = 0; k < 2; ++k) {
        // Hand-computed batch moments of channel k: samples i at (i*2+k)*3+j.
        double sum = 0, sq = 0;
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 3; ++j) sum += double(x[size_t((i * 2 + k) * 3 + j)]);
        const double mu = sum / 12;
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 3; ++j)
            sq += std::pow(double(x[size_t((i * 2 + k) * 3 + j)]) - mu, 2);
        const double unbiased = sq / 11;
        const double f = cumulative ? 1.0 / step : 0.1;
        want_rm[size_t(k)] = (1 - f) * want_rm[size_t(k)] + f * mu;
        want_rv[size_t(k)] = (1 - f) * want_rv[size_t(k)] + f * unbiased;
      }
    }
    EXPECT_LT(scaled_error(widen<T>(rm), want_rm), 1e-6) << (cumulative ? "cumulative" : "0.1");
    EXPECT_LT(scaled_error(widen<T>(rv), want_rv), 1e-6) << (cumulative ? "cumulative" : "0.1");
  }
}

// Every element type, with the mean much larger than the standard
// deviation (as far as T's precision allows: bfloat16 holds 8 significant
// bits, so values a few units apart near 1000 are the most it can carry).
template <class T>
class Numerics : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, double, bfloat16, float16>;
TYPED_TEST_SUITE(Numerics, ElementTypes);

TYPED_TEST(Numerics, IllConditionedVariance) {
  using T = TypeParam;
  using P = param_t<T>;
  // float and double: a one-pass sum of squares would cancel 1e12 relative
  // (double keeps the variance to about 1e-4 then, float not at all); more
  // would be beyond the double reference's own naive mean.
  double mean = 1e4, stddev = 1e-2;
  if constexpr (std::is_same_v<T, bfloat16>) mean = 1000, stddev = 8;   // spacing 4
  if constexpr (std::is_same_v<T, float16>) mean = 1000, stddev = 1.5;  // spacing 0.5
  const double tol = std::is_same_v<T, double> ? 1e-6 : 1e-3;
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    const Shape shape{16, 3, 1000, layout};
    const auto x = cast<T>(random_values(size_t(shape.numel()), 42, mean, stddev));
    std::vector<T> y(x.size());
    std::vector<P> mu(3), invstd(3), rm(3, P(0)), rv(3, P(0));
    Options opt;
    opt.momentum = 1.0;
    forward_training<T>(shape, x.data(), nullptr, nullptr, y.data(), mu.data(), invstd.data(),
                        rm.data(), rv.data(), opt);
    const auto want = ref::forward_training(shape, widen<T>(x), {}, {}, 1e-5);
    const double m = double(shape.m());
    for (size_t k = 0; k < 3; ++k) {
      ASSERT_GT(want.var[k], 0.1 * stddev * stddev);  // the data did keep a spread
      const double unbiased = want.var[k] * m / (m - 1);
      EXPECT_LT(std::abs(double(rv[k]) - unbiased) / unbiased, tol);
      const double var_from_invstd = 1.0 / (double(invstd[k]) * double(invstd[k])) - 1e-5;
      EXPECT_LT(std::abs(var_from_invstd - want.var[k]) / want.var[k], tol);
    }
    EXPECT_LE(rounding_ratio(widen<T>(y), want.y, unit_roundoff<T>(), tol * max_abs(want.y)), 1.0);
  }
}

// A NaN or Inf in one channel leaves every other channel's outputs and
// running statistics exactly as without it, for every element type.
TYPED_TEST(Numerics, NonFiniteStaysInItsChannel) {
  using T = TypeParam;
  using P = param_t<T>;
  for (Layout layout : {Layout::NCHW, Layout::NHWC})
    for (float bad :
         {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      const Shape shape{4, 3, 5, layout};
      const auto clean = cast<T>(random_values(60, 77));
      auto dirty = clean;
      const size_t at = layout == Layout::NCHW ? (2 * 3 + 1) * 5 + 3 : (2 * 5 + 3) * 3 + 1;
      dirty[at] = T(bad);  // channel 1
      auto run = [&](const std::vector<T>& x) {
        std::vector<T> y(60), dx(60);
        std::vector<P> mean(3), invstd(3), rm(3, P(0)), rv(3, P(1)), dw(3), db(3);
        forward_training<T>(shape, x.data(), nullptr, nullptr, y.data(), mean.data(), invstd.data(),
                            rm.data(), rv.data());
        backward<T>(shape, clean.data(), x.data(), nullptr, mean.data(), invstd.data(), dx.data(),
                    dw.data(), db.data());
        return std::vector<std::vector<double>>{widen<T>(y),  widen<P>(mean), widen<P>(invstd),
                                                widen<P>(rm), widen<P>(rv),   widen<T>(dx),
                                                widen<P>(dw)};
      };
      const auto a = run(clean), b = run(dirty);
      for (size_t t = 0; t < a.size(); ++t) {
        const size_t count = a[t].size();
        for (size_t i = 0; i < count; ++i) {
          const int64_t k = count == 3               ? int64_t(i)
                            : layout == Layout::NCHW ? int64_t(i / 5 % 3)
                                                     : int64_t(i % 3);
          if (k == 1) {
            EXPECT_FALSE(std::isfinite(b[t][i])) << "output " << t << " index " << i;
          } else {
            EXPECT_EQ(a[t][i], b[t][i]) << "output " << t << " index " << i;
          }
        }
      }
    }
}

}  // namespace bnorm::test
