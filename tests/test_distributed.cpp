// The split passes of bnorm/distributed.hpp, combined by hand as a transport
// would (shifted sums over the slices), against the double reference on the
// whole batch: a batch cut into uneven slices, one of them empty.
#include <gtest/gtest.h>

#include <bnorm/distributed.hpp>
#include <numeric>

#include "common.hpp"

namespace bnorm::test {
namespace {

template <class T>
class Distributed : public ::testing::Test {};
using Types = ::bnorm::test::ElementTypes;
TYPED_TEST_SUITE(Distributed, Types);

// Elements of T: inputs already rounded to T, so the reference sees the same values.
template <class T>
std::vector<T> as_type(const std::vector<double>& v) {
  std::vector<T> out;
  for (double e : v) out.push_back(T(float(e)));
  return out;
}
template <>
std::vector<double> as_type<double>(const std::vector<double>& v) {
  return v;
}

// Largest |got - want| over max |want|: one rounding of T plus float
// accumulation over the batch (float32's epsilon times a few), for y and dx.
template <class T>
double bound() {
  return std::is_same_v<T, double> ? 1e-13 : 4 * unit_roundoff<T>() + 64 * 0x1p-24;
}

TYPED_TEST(Distributed, SlicesCombinedMatchTheWholeBatch) {
  using T = TypeParam;
  using P = param_t<T>;
  const std::vector<int64_t> slices{2, 0, 3, 1};
  const int64_t n = std::accumulate(slices.begin(), slices.end(), int64_t{0});
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    const Shape whole{n, 5, 7, layout};
    const size_t per_sample = size_t(whole.c * whole.s), c = size_t(whole.c);
    const auto x = as_type<T>(random_values(size_t(whole.numel()), 11, 3.0, 2.0));
    const auto dy = as_type<T>(random_values(size_t(whole.numel()), 12));
    const auto weight_d = random_values(c, 13, 1.0, 0.3), bias_d = random_values(c, 14);
    const std::vector<P> weight(weight_d.begin(), weight_d.end()),
        bias(bias_d.begin(), bias_d.end());
    const auto xd = widen<T>(x), dyd = widen<T>(dy);
    const std::vector<double> wd = widen<P>(weight), bd = widen<P>(bias);
    const auto ref = reference::forward_training(whole, xd, wd, bd, 1e-5);
    const auto grads = reference::backward(reference::Method::compact, whole, dyd, xd, wd, 1e-5);

    for (double shift_scale : {0.0, 1.0}) {  // K = 0, and K near the mean
      // Local statistics of every slice, then the shifted sums.
      std::vector<double> s1(c, 0), s2(c, 0), shift(c);
      for (size_t k = 0; k < c; ++k) shift[k] = shift_scale * (ref.mean[k] + 0.25);
      int64_t offset = 0;
      for (int64_t ni : slices) {
        const Shape local{ni, whole.c, whole.s, layout};
        std::vector<double> mean(c), m2(c);
        distributed::local_moments(local, x.data() + offset * per_sample, mean.data(), m2.data());
        for (size_t k = 0; k < c; ++k) {
          const double d = mean[k] - shift[k], count = double(local.m());
          s1[k] += count * d;
          s2[k] += m2[k] + count * d * d;
        }
        offset += ni;
      }
      const int64_t count = whole.m();
      std::vector<double> mean(c), var(c);
      for (size_t k = 0; k < c; ++k) {
        mean[k] = shift[k] + s1[k] / double(count);
        var[k] = (s2[k] - s1[k] * s1[k] / double(count)) / double(count);
        // The local statistics accumulate in param_t<T> within work units.
        const double stat_bound = std::is_same_v<T, double> ? 1e-12 : 64 * 0x1p-24;
        EXPECT_NEAR(mean[k], ref.mean[k],
                    stat_bound * (std::abs(ref.mean[k]) + std::sqrt(ref.var[k])));
        EXPECT_NEAR(var[k], ref.var[k], stat_bound * ref.var[k]);
      }

      // Forward and backward of every slice with the global statistics.
      std::vector<T> y(x.size()), dx(x.size());
      std::vector<P> save_mean(c), save_invstd(c), running_mean(c, P(0)), running_var(c, P(1));
      std::vector<double> sum_dy(c, 0), sum_dy_xhat(c, 0), dweight(c, 0), dbias(c, 0);
      offset = 0;
      for (int64_t ni : slices) {
        const Shape local{ni, whole.c, whole.s, layout};
        const size_t at = size_t(offset) * per_sample;
        std::vector<P> rm(c, P(0)), rv(c, P(1));
        distributed::forward_with_moments(
            local, x.data() + at, weight.data(), bias.data(), mean.data(), var.data(), count,
            y.data() + at, save_mean.data(), save_invstd.data(), rm.data(), rv.data());
        running_mean = rm;  // every slice writes the same values
        running_var = rv;
        std::vector<double> a(c), b(c);
        distributed::local_backward_sums(local, dy.data() + at, x.data() + at, save_mean.data(),
                                         save_invstd.data(), a.data(), b.data());
        for (size_t k = 0; k < c; ++k) {
          sum_dy[k] += a[k];
          sum_dy_xhat[k] += b[k];
        }
        offset += ni;
      }
      EXPECT_LE(scaled_error(widen<T>(y), ref.y), bound<T>()) << describe(whole);
      for (size_t k = 0; k < c; ++k) {
        const double m = double(count);
        EXPECT_NEAR(to_double(running_mean[k]), 0.1 * ref.mean[k],
                    4 * unit_roundoff<P>() * (1 + std::abs(ref.mean[k])));
        EXPECT_NEAR(to_double(running_var[k]), 0.9 + 0.1 * ref.var[k] * m / (m - 1),
                    4 * unit_roundoff<P>() * (1 + ref.var[k]));
      }
      offset = 0;
      for (int64_t ni : slices) {
        const Shape local{ni, whole.c, whole.s, layout};
        const size_t at = size_t(offset) * per_sample;
        distributed::backward_with_sums(local, dy.data() + at, x.data() + at, weight.data(),
                                        save_mean.data(), save_invstd.data(), sum_dy.data(),
                                        sum_dy_xhat.data(), count, dx.data() + at);
        offset += ni;
      }
      EXPECT_LE(dx_error(whole, widen<T>(dx), grads.dx, dyd, wd, ref.invstd), bound<T>())
          << describe(whole);
      EXPECT_LE(scaled_error(sum_dy, grads.dbias), 1e-6);
      const double sum_bound = std::is_same_v<T, double> ? 1e-12 : 1e-5;
      EXPECT_LE(scaled_error(sum_dy_xhat, grads.dweight), sum_bound);
    }
  }
}

TEST(DistributedErrors, BadArgumentsThrowBeforeWriting) {
  const Shape local{2, 3, 4, Layout::NCHW};
  const std::vector<float> x(24, 1.f);
  std::vector<float> y(24, -7.f), rm(3, 5.f), rv(3, 6.f), sm(3, 8.f), si(3, 9.f);
  const std::vector<double> mean(3, 0.0), var(3, 1.0), bad_var{1.0, -1.0, 1.0};
  auto forward = [&](int64_t count, const std::vector<double>& v) {
    distributed::forward_with_moments(local, x.data(), nullptr, nullptr, mean.data(), v.data(),
                                      count, y.data(), sm.data(), si.data(), rm.data(), rv.data());
  };
  EXPECT_THROW(forward(1, var), std::invalid_argument);
  EXPECT_THROW(forward(7, var), std::invalid_argument);  // fewer than the local 8 values
  EXPECT_THROW(forward(16, bad_var), std::invalid_argument);
  for (float v : y) EXPECT_EQ(v, -7.f);
  EXPECT_EQ(rm, std::vector<float>(3, 5.f));
  EXPECT_EQ(rv, std::vector<float>(3, 6.f));
  EXPECT_EQ(sm, std::vector<float>(3, 8.f));
  std::vector<double> m(3), m2(3);
  EXPECT_THROW(
      distributed::local_moments(Shape{-1, 3, 4, Layout::NCHW}, x.data(), m.data(), m2.data()),
      std::invalid_argument);
  try {
    forward(1, var);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("count"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace bnorm::test
