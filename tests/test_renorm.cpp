// Batch Renormalization: the reference against finite differences, the fast
// path (float and double, both layouts) against the reference, rmax = 1 and
// dmax = 0 against batch norm bit for bit, and the argument errors.
#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>

#include "common.hpp"

namespace bnorm::test {
namespace ref = bnorm::reference;
namespace {

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Running statistics that put r and d inside the limits (near the batch's
// own) or far outside them (r and d clipped).
struct RunningStats {
  std::vector<double> mean, var;
};
RunningStats running_for(const std::vector<double>& batch_mean,
                         const std::vector<double>& batch_var, bool clipped, uint64_t seed) {
  RunningStats out;
  const auto jitter = random_values(batch_mean.size(), seed, 0.0, 1.0);
  for (size_t k = 0; k < batch_mean.size(); ++k) {
    const double sd = std::sqrt(batch_var[k]);
    if (clipped) {
      // sigma 10x or 1/10x sigma_B (r clipped at 1/3 or 3), mean 8 sigma off (d clipped at 5).
      const double f = k % 2 == 0 ? 10.0 : 0.1;
      out.var.push_back(batch_var[k] * f * f);
      out.mean.push_back(batch_mean[k] + (k % 3 == 0 ? 8.0 : -8.0) * sd * f);
    } else {
      out.var.push_back(batch_var[k] * (1.0 + 0.3 * std::tanh(jitter[k])));
      out.mean.push_back(batch_mean[k] + 0.5 * sd * jitter[k]);
    }
  }
  return out;
}

}  // namespace

TEST(RenormReference, BackwardMatchesFiniteDifferencesWithRAndDConstant) {
  for (const Shape& shape :
       {Shape{6, 3, 4, Layout::NCHW}, Shape{9, 2, 1, Layout::NHWC}, Shape{2, 2, 3, Layout::NHWC}}) {
    SCOPED_TRACE(describe(shape));
    const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
    const auto x = random_values(numel, 1, 0.5, 2.0);
    const auto dy = random_values(numel, 2);
    const auto w = random_values(c, 3, 1.0, 0.5), b = random_values(c, 4);
    const auto r = random_values(c, 5, 1.5, 0.3), d = random_values(c, 6, 0.0, 2.0);
    const auto g = ref::batch_renorm_backward(shape, dy, x, w, r, d, 1e-3);
    const auto fd = ref::batch_renorm_finite_differences(shape, dy, x, w, b, r, d, 1e-3);
    EXPECT_LT(scaled_error(g.dx, fd.dx), 1e-7);
    EXPECT_LT(scaled_error(g.dweight, fd.dweight), 1e-8);
    EXPECT_LT(scaled_error(g.dbias, fd.dbias), 1e-8);
    // r = 1, d = 0 is batch norm: the paper's batch-norm closed form agrees.
    const std::vector<double> one(c, 1.0), zero(c, 0.0);
    const auto gbn = ref::batch_renorm_backward(shape, dy, x, w, one, zero, 1e-3);
    const auto want = ref::backward(ref::Method::closed_form, shape, dy, x, w, 1e-3);
    EXPECT_LT(scaled_error(gbn.dx, want.dx), 1e-12);
    EXPECT_LT(scaled_error(gbn.dweight, want.dweight), 1e-12);
  }
}

TEST(RenormReference, ForwardByHand) {
  // One channel, x = {1, 2, 3, 6}: mu_B = 3, var_B = 3.5; eps = 0.5 so that
  // sigma_B = 2. running_mean 1, running_var 0.5: sigma = 1, r = 2 (inside
  // rmax = 3), d = 2 (clipped to dmax = 1.5).
  const Shape shape{4, 1, 1, Layout::NCHW};
  const std::vector<double> x{1, 2, 3, 6};
  const auto f =
      ref::batch_renorm_forward_training(shape, x, {}, {}, std::vector<double>{1.0},
                                         std::vector<double>{0.5}, 3.0, 1.5, 0.25, 0.5, true);
  EXPECT_DOUBLE_EQ(f.r[0], 2.0);
  EXPECT_DOUBLE_EQ(f.d[0], 1.5);
  const std::vector<double> want{-2.0 + 1.5, -1.0 + 1.5, 0.0 + 1.5, 3.0 + 1.5};  // (x-3)/2*2+1.5
  for (size_t i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(f.y[i], want[i]);
  EXPECT_DOUBLE_EQ(f.running_mean[0], 0.75 * 1.0 + 0.25 * 3.0);
  EXPECT_DOUBLE_EQ(f.running_var[0], 0.75 * 0.5 + 0.25 * 3.5 * 4.0 / 3.0);
}

template <class T>
class Renorm : public ::testing::Test {
 protected:
  static double tol() { return std::is_same_v<T, float> ? 2e-5 : 1e-12; }
};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Renorm, Types);

TYPED_TEST(Renorm, MatchesReferenceWithClippingActiveAndInactive) {
  using T = TypeParam;
  uint64_t seed = 40;
  for (const Shape& shape : sweep_shapes())
    for (bool clipped : {false, true})
      for (bool unbiased : {true, false}) {
        SCOPED_TRACE(describe(shape) + (clipped ? " clipped" : " inside") +
                     (unbiased ? " unbiased" : " biased"));
        const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
        const auto x = cast<T>(random_values(numel, ++seed, 0.3, 1.5));
        const auto dy = cast<T>(random_values(numel, ++seed));
        const auto w = cast<T>(random_values(c, ++seed, 1.0, 0.5));
        const auto b = cast<T>(random_values(c, ++seed));
        const auto xr = widen<T>(x);
        const double eps = 1e-5, momentum = 0.01;
        const auto batch = ref::forward_training(shape, xr, {}, {}, eps);
        const auto run = running_for(batch.mean, batch.var, clipped, ++seed);
        std::vector<T> rm = cast<T>(run.mean), rv = cast<T>(run.var);
        const auto want =
            ref::batch_renorm_forward_training(shape, xr, widen<T>(w), widen<T>(b), widen<T>(rm),
                                               widen<T>(rv), 3.0, 5.0, momentum, eps, unbiased);
        if (clipped)
          for (size_t k = 0; k < c; ++k) {
            ASSERT_TRUE(want.r[k] == 3.0 || want.r[k] == 1.0 / 3.0) << want.r[k];
            ASSERT_EQ(std::abs(want.d[k]), 5.0);
          }
        std::vector<T> y(numel), mean(c), invstd(c), r(c), d(c);
        Options opt;
        opt.eps = eps;
        opt.momentum = momentum;
        opt.unbiased_running_var = unbiased;
        batch_renorm_forward_training<T>(shape, x.data(), w.data(), b.data(), y.data(), mean.data(),
                                         invstd.data(), r.data(), d.data(), rm.data(), rv.data(),
                                         {3.0, 5.0}, opt);
        EXPECT_LT(scaled_error(widen<T>(y), want.y), 4 * this->tol());
        EXPECT_LT(scaled_error(widen<T>(mean), want.mean), this->tol());
        EXPECT_LT(scaled_error(widen<T>(invstd), want.invstd), this->tol());
        EXPECT_LT(scaled_error(widen<T>(r), want.r), this->tol());
        EXPECT_LT(scaled_error(widen<T>(d), want.d), this->tol());
        EXPECT_LT(scaled_error(widen<T>(rm), want.running_mean), this->tol());
        EXPECT_LT(scaled_error(widen<T>(rv), want.running_var), this->tol());

        std::vector<T> dx(numel), dw(c), db(c);
        batch_renorm_backward<T>(shape, dy.data(), x.data(), w.data(), mean.data(), invstd.data(),
                                 r.data(), d.data(), dx.data(), dw.data(), db.data());
        const auto g = ref::batch_renorm_backward(shape, widen<T>(dy), xr, widen<T>(w), widen<T>(r),
                                                  widen<T>(d), eps);
        // dx's terms have the size of weight * r * invstd * dy.
        std::vector<double> wr(c);
        for (size_t k = 0; k < c; ++k) wr[k] = double(w[k]) * double(r[k]);
        EXPECT_LT(dx_error(shape, widen<T>(dx), g.dx, widen<T>(dy), wr, want.invstd),
                  10 * this->tol());
        EXPECT_LT(scaled_error(widen<T>(dw), g.dweight), 10 * this->tol());
        EXPECT_LT(scaled_error(widen<T>(db), g.dbias), 10 * this->tol());
      }
}

TYPED_TEST(Renorm, RmaxOneDmaxZeroIsBatchNormBitwise) {
  using T = TypeParam;
  uint64_t seed = 70;
  for (const Shape& shape : sweep_shapes())
    for (bool affine : {true, false}) {
      SCOPED_TRACE(describe(shape) + (affine ? " affine" : ""));
      const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
      const auto x = cast<T>(random_values(numel, ++seed, -0.7, 3.0));
      const auto dy = cast<T>(random_values(numel, ++seed));
      const auto w = affine ? cast<T>(random_values(c, ++seed, 1.0, 0.5)) : std::vector<T>{};
      const auto b = affine ? cast<T>(random_values(c, ++seed)) : std::vector<T>{};
      const T* wp = affine ? w.data() : nullptr;
      const T* bp = affine ? b.data() : nullptr;
      // Running statistics far from the batch's: r and d would be far from
      // 1 and 0 without the limits.
      const auto rm0 = cast<T>(random_values(c, ++seed, 4.0, 2.0));
      const auto rv0 = cast<T>(random_values(c, ++seed, 9.0, 1.0));
      Options opt;
      opt.momentum = 0.3;
      std::vector<T> y1(numel), m1(c), s1(c), rm1 = rm0, rv1 = rv0, r(c), d(c);
      batch_renorm_forward_training<T>(shape, x.data(), wp, bp, y1.data(), m1.data(), s1.data(),
                                       r.data(), d.data(), rm1.data(), rv1.data(), {1.0, 0.0}, opt);
      std::vector<T> y2(numel), m2(c), s2(c), rm2 = rm0, rv2 = rv0;
      forward_training<T>(shape, x.data(), wp, bp, y2.data(), m2.data(), s2.data(), rm2.data(),
                          rv2.data(), opt);
      EXPECT_TRUE(same_bits(y1, y2));
      EXPECT_TRUE(same_bits(m1, m2));
      EXPECT_TRUE(same_bits(s1, s2));
      EXPECT_TRUE(same_bits(rm1, rm2));
      EXPECT_TRUE(same_bits(rv1, rv2));
      EXPECT_TRUE(same_bits(r, std::vector<T>(c, T(1))));
      EXPECT_TRUE(same_bits(d, std::vector<T>(c, T(0))));
      std::vector<T> dx1(numel), dw1(c), db1(c), dx2(numel), dw2(c), db2(c);
      batch_renorm_backward<T>(shape, dy.data(), x.data(), wp, m1.data(), s1.data(), r.data(),
                               d.data(), dx1.data(), dw1.data(), db1.data());
      backward<T>(shape, dy.data(), x.data(), wp, m2.data(), s2.data(), dx2.data(), dw2.data(),
                  db2.data());
      EXPECT_TRUE(same_bits(dx1, dx2));
      EXPECT_TRUE(same_bits(dw1, dw2));
      EXPECT_TRUE(same_bits(db1, db2));
    }
}

TEST(RenormErrors, BadLimitsAndMissingStatisticsWriteNothing) {
  const Shape shape{4, 2, 3, Layout::NCHW};
  const auto x = random_values(24, 1);
  const double sentinel = 123.0;
  struct Case {
    RenormLimits limits;
    bool track;
    const char* expect;
  };
  const Case cases[] = {{{0.5, 5.0}, true, "rmax must be finite and >= 1, got 0.5"},
                        {{NAN, 5.0}, true, "rmax must be finite and >= 1"},
                        {{INFINITY, 5.0}, true, "rmax must be finite and >= 1"},
                        {{3.0, -1.0}, true, "dmax must be finite and >= 0, got -1"},
                        {{3.0, NAN}, true, "dmax must be finite and >= 0"},
                        {{3.0, 5.0}, false, "running_mean and running_var are required"}};
  for (const Case& cs : cases) {
    SCOPED_TRACE(cs.expect);
    std::vector<double> y(24, sentinel), mean(2, sentinel), invstd(2, sentinel), r(2, sentinel),
        d(2, sentinel), rm(2, 0.5), rv(2, 2.0);
    try {
      batch_renorm_forward_training<double>(
          shape, x.data(), nullptr, nullptr, y.data(), mean.data(), invstd.data(), r.data(),
          d.data(), cs.track ? rm.data() : nullptr, cs.track ? rv.data() : nullptr, cs.limits);
      ADD_FAILURE() << "no exception";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(cs.expect), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("batch_renorm_forward_training"), std::string::npos);
    }
    EXPECT_EQ(y, std::vector<double>(24, sentinel));
    EXPECT_EQ(mean, std::vector<double>(2, sentinel));
    EXPECT_EQ(r, std::vector<double>(2, sentinel));
    EXPECT_EQ(d, std::vector<double>(2, sentinel));
    EXPECT_EQ(rm, std::vector<double>(2, 0.5));
    EXPECT_EQ(rv, std::vector<double>(2, 2.0));
  }
  // Backward without r or d.
  std::vector<double> dx(24, sentinel), mean(2, 0.0), invstd(2, 1.0), r(2, 1.0);
  EXPECT_THROW(
      batch_renorm_backward<double>(shape, x.data(), x.data(), nullptr, mean.data(), invstd.data(),
                                    r.data(), nullptr, dx.data(), nullptr, nullptr),
      std::invalid_argument);
  EXPECT_EQ(dx, std::vector<double>(24, sentinel));
}

}  // namespace bnorm::test

namespace bnorm::test {

TEST(RenormSchedule, PapersMarks) {
  const RenormSchedule paper;
  EXPECT_EQ(paper.at(0).rmax, 1.0);
  EXPECT_EQ(paper.at(5000).dmax, 0.0);
  EXPECT_DOUBLE_EQ(paper.at(15000).dmax, 2.5);  // half way from 5k to 25k
  EXPECT_DOUBLE_EQ(paper.at(22500).rmax, 2.0);  // half way from 5k to 40k
  EXPECT_EQ(paper.at(25000).dmax, 5.0);
  EXPECT_EQ(paper.at(90000).rmax, 3.0);
  const RenormSchedule short_run = paper.scaled(0.1);  // a 5,000-step run
  EXPECT_EQ(short_run.at(500).rmax, 1.0);
  EXPECT_EQ(short_run.at(2500).dmax, 5.0);
  EXPECT_DOUBLE_EQ(short_run.at(2250).rmax, 2.0);
}

}  // namespace bnorm::test

namespace bnorm::test {
namespace ref = bnorm::reference;

// The 16-bit element types: tensors in T, per-channel arrays in P = float.
template <class T>
class RenormNarrow : public ::testing::Test {};
using NarrowTypes = ::testing::Types<bfloat16, float16>;
TYPED_TEST_SUITE(RenormNarrow, NarrowTypes);

TYPED_TEST(RenormNarrow, MatchesReferenceAndIsBatchNormAtRmaxOneDmaxZero) {
  using T = TypeParam;
  using P = param_t<T>;
  uint64_t seed = 900;
  for (const Shape& shape : {Shape{6, 3, 5, Layout::NCHW}, Shape{9, 4, 3, Layout::NHWC},
                             Shape{16, 5, 1, Layout::NCHW}}) {
    SCOPED_TRACE(describe(shape));
    const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
    const auto x = cast<T>(random_values(numel, ++seed, 0.3, 1.5));
    const auto dy = cast<T>(random_values(numel, ++seed));
    const auto w = cast<P>(random_values(c, ++seed, 1.0, 0.5));
    const auto b = cast<P>(random_values(c, ++seed));
    const auto xr = widen<T>(x);
    // Running statistics that clip r at 3 and d at -5 in every channel.
    const auto batch = ref::forward_training(shape, xr, {}, {}, 1e-5);
    std::vector<P> rm(c), rv(c);
    for (size_t k = 0; k < c; ++k) {
      rv[k] = P(batch.var[k] / 100);
      rm[k] = P(batch.mean[k] + 8 * std::sqrt(batch.var[k]) / 10);
    }
    const auto want = ref::batch_renorm_forward_training(
        shape, xr, widen<P>(w), widen<P>(b), widen<P>(rm), widen<P>(rv), 3.0, 5.0, 0.1, 1e-5, true);
    std::vector<T> y(numel), dx(numel);
    std::vector<P> mean(c), invstd(c), r(c), d(c), rm1 = rm, rv1 = rv, dw(c), db(c);
    Options opt;
    batch_renorm_forward_training<T>(shape, x.data(), w.data(), b.data(), y.data(), mean.data(),
                                     invstd.data(), r.data(), d.data(), rm1.data(), rv1.data(),
                                     {3.0, 5.0}, opt);
    for (size_t k = 0; k < c; ++k) {
      EXPECT_EQ(r[k], P(3.0));
      EXPECT_EQ(d[k], P(-5.0));
    }
    // y: one rounding to T of values up to max |y|, after float arithmetic.
    EXPECT_LE(rounding_ratio(widen<T>(y), want.y, unit_roundoff<T>(), 1e-5 * max_abs(want.y)), 1.0);
    EXPECT_LT(scaled_error(widen<P>(rv1), want.running_var), 1e-5);
    batch_renorm_backward<T>(shape, dy.data(), x.data(), w.data(), mean.data(), invstd.data(),
                             r.data(), d.data(), dx.data(), dw.data(), db.data());
    const auto g = ref::batch_renorm_backward(shape, widen<T>(dy), xr, widen<P>(w), widen<P>(r),
                                              widen<P>(d), 1e-5);
    EXPECT_LT(scaled_error(widen<P>(dw), g.dweight), 1e-5);
    EXPECT_LT(scaled_error(widen<P>(db), g.dbias), 1e-5);
    // dx is rounded to T once: a few units of T's roundoff of its scale.
    EXPECT_LT(scaled_error(widen<T>(dx), g.dx), 4 * unit_roundoff<T>());

    // rmax = 1, dmax = 0: batch norm, bit for bit.
    std::vector<T> y2(numel), y3(numel);
    std::vector<P> m2(c), s2(c), rm2 = rm, rv2 = rv, m3(c), s3(c), rm3 = rm, rv3 = rv;
    batch_renorm_forward_training<T>(shape, x.data(), w.data(), b.data(), y2.data(), m2.data(),
                                     s2.data(), r.data(), d.data(), rm2.data(), rv2.data(),
                                     {1.0, 0.0}, opt);
    forward_training<T>(shape, x.data(), w.data(), b.data(), y3.data(), m3.data(), s3.data(),
                        rm3.data(), rv3.data(), opt);
    EXPECT_EQ(0, std::memcmp(y2.data(), y3.data(), numel * sizeof(T)));
    EXPECT_EQ(0, std::memcmp(rv2.data(), rv3.data(), c * sizeof(P)));
  }
}

}  // namespace bnorm::test
