// libFuzzer harness: bnorm::backward (float and double) against the
// documented formula evaluated in double from the same save_mean and
// save_invstd, or a clean std::invalid_argument.
#include "fuzz/fuzz_common.hpp"

namespace bnorm::fuzz {
namespace {

template <class T>
void run(FuzzedDataProvider& in) {
  constexpr const char* fn = "backward";
  const Shape shape = decode_shape(in);
  const double eps = decode_eps(in);
  const uint8_t present = in.ConsumeIntegral<uint8_t>();
  const uint8_t nulls = in.ConsumeIntegral<uint8_t>();
  const bool dy_null = nulls == 255, x_null = nulls == 254, sm_null = nulls == 253,
             si_null = nulls == 252;
  // save_mean/save_invstd: those of the double reference forward rounded
  // to T (what a forward gives), or fuzzed values (any mean, any invstd).
  const bool stats_from_forward = in.ConsumeIntegral<uint8_t>() < 200;
  SplitMix rng{in.ConsumeIntegral<uint64_t>()};

  const bool valid_shape = shape_valid(shape);
  if (valid_shape && shape.numel() > kMaxNumel) return;
  const size_t numel = valid_shape ? size_t(shape.numel()) : kInvalidShapeNumel;
  const size_t c = shape.c >= 1 && shape.c <= kMaxNumel ? size_t(shape.c) : kInvalidShapeNumel;
  std::vector<T> x = valid_shape ? decode_tensor<T>(in, shape, rng) : std::vector<T>(numel, T(1));
  std::vector<T> dy = valid_shape ? decode_tensor<T>(in, shape, rng) : std::vector<T>(numel, T(1));
  std::vector<T> weight = decode_params<T>(in, int64_t(c), rng, 1.0, 2.0);
  std::vector<T> save_mean = decode_params<T>(in, int64_t(c), rng, 0.0, 2.0);
  std::vector<T> save_invstd = decode_params<T>(in, int64_t(c), rng, 1.0, 0.5);
  if (valid_shape && stats_from_forward && eps_valid(eps)) {
    const auto fw = reference::forward_training(shape, widen(x), {}, {}, eps);
    for (size_t k = 0; k < c; ++k) {
      save_mean[k] = T(fw.mean[k]);
      save_invstd[k] = T(fw.invstd[k]);
    }
  }
  std::vector<T> dx(numel, T(7.25)), dweight(c, T(7.25)), dbias(c, T(7.25));
  const T* w = present & 1 ? weight.data() : nullptr;
  T* dxp = present & 2 ? dx.data() : nullptr;
  T* dwp = present & 4 ? dweight.data() : nullptr;
  T* dbp = present & 8 ? dbias.data() : nullptr;
  const auto dx_bytes = bytes_of(dx), dw_bytes = bytes_of(dweight), db_bytes = bytes_of(dbias);

  const bool valid = valid_shape && !dy_null && !x_null && !sm_null && !si_null;
  const bool threw = rejected(fn, [&] {
    backward<T>(shape, dy_null ? nullptr : dy.data(), x_null ? nullptr : x.data(), w,
                sm_null ? nullptr : save_mean.data(), si_null ? nullptr : save_invstd.data(), dxp,
                dwp, dbp);
  });
  expect_outcome(fn, valid, threw);
  if (threw) {
    if (bytes_of(dx) != dx_bytes || bytes_of(dweight) != dw_bytes || bytes_of(dbias) != db_bytes)
      fuzz_fail("backward threw but wrote to an output");
    return;
  }

  const int64_t m = shape.m();
  const double f = bound_factor<T>(m);
  for (int64_t k = 0; k < shape.c; ++k) {
    const double mu = double(save_mean[size_t(k)]), invstd = double(save_invstd[size_t(k)]);
    const double gamma = w ? double(weight[size_t(k)]) : 1.0;
    std::vector<int64_t> at(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) {
      const int64_t sample = i / shape.s, pos = i % shape.s;
      at[size_t(i)] = shape.layout == Layout::NCHW ? (sample * shape.c + k) * shape.s + pos
                                                   : (sample * shape.s + pos) * shape.c + k;
    }
    // The header's formulas with x_hat from the given statistics, in long
    // double (x87: 64-bit significand, exponents to 1e4932, so x_hat of a
    // denormal invstd is not rounded to double's denormal grid); alongside,
    // the sums of magnitudes that bound the rounding errors.
    long double sum_dy_l = 0, sum_dy_xhat_l = 0;
    double abs_dy = 0, abs_dy_a = 0, max_a = 0, spread = 0, max_dy = 0;
    for (int64_t i = 0; i < m; ++i) {
      const double g = double(dy[size_t(at[size_t(i)])]), xi = double(x[size_t(at[size_t(i)])]);
      const long double xhat = ((long double)xi - mu) * invstd;
      const double a =
          double((long double)(std::abs(xi) + std::abs(mu)) * std::abs(invstd));  // bounds |xhat|
      sum_dy_l += g;
      sum_dy_xhat_l += g * xhat;
      abs_dy += std::abs(g);
      abs_dy_a += double((long double)std::abs(g) *
                         ((long double)(std::abs(xi) + std::abs(mu)) * std::abs(invstd)));
      max_a = std::max(max_a, a);
      spread = std::max(spread, std::abs(xi) + std::abs(mu));
      max_dy = std::max(max_dy, std::abs(g));
    }
    const double sum_dy = double(sum_dy_l), sum_dy_xhat = double(sum_dy_xhat_l);
    if (!std::isfinite(sum_dy) || !std::isfinite(abs_dy_a)) continue;  // NaN/Inf, or overflow
    if (known_overflow<T>(std::max({abs_dy, abs_dy_a, spread * double(m), abs_dy * spread})))
      continue;
    // The kernels reduce sum dy * (x - mean) and multiply by invstd after:
    // that sum, and the partial sums of dy, must fit a double.
    if (!std::isfinite(abs_dy * spread) || !std::isfinite(4 * abs_dy)) continue;
    context() = "channel " + std::to_string(k) + " of " + describe(shape) + ", mean " + num(mu) +
                ", invstd " + num(invstd) + ", gamma " + num(gamma) + ", sum dy " + num(sum_dy) +
                ", sum dy*xhat " + num(sum_dy_xhat);
    // Every product of two of dy, x - mean and invstd may round to T's
    // denormal grid and then be multiplied by the third.
    const double tiny = double(m) * double(std::numeric_limits<T>::denorm_min()) *
                        (1 + std::abs(invstd) + spread + max_dy);
    if (dbp) expect_close("dbias", k, dbias[size_t(k)], sum_dy, f * abs_dy + tiny);
    if (dwp && !products_underflow<T>(max_dy, spread, invstd))
      expect_close("dweight", k, dweight[size_t(k)], sum_dy_xhat, f * abs_dy_a + tiny);
    if (!dxp || products_underflow<T>(max_dy, spread, invstd)) continue;
    // dx_i = gamma * invstd * (dy_i - sum_dy / m - xhat_i * sum_dy_xhat / m), and the kernels
    // fold it into x * p + dy * q + r: the same overflow limit as y, and p, q and r may round
    // to T's denormal grid (the first term of the bound).
    const double md = double(m);
    if (scale_overflows<T>(gamma * invstd, 0, std::abs(invstd) * abs_dy_a, max_a) ||
        scale_overflows<T>(gamma * invstd, 0, invstd, 1.0) ||
        scale_overflows<T>(gamma, 0, invstd, max_dy + abs_dy))
      continue;
    // Likewise at the other end: a coefficient gamma * invstd or
    // gamma * invstd^2 below T's smallest normal keeps only part of its
    // significand (or none), and the sums it multiplies can be large.
    const double smallest = double(std::numeric_limits<T>::min());
    const double p1 = std::abs(gamma * invstd), p2 = p1 * std::abs(invstd);
    if ((p1 != 0 && p1 < smallest) || (p2 != 0 && p2 < smallest)) continue;
    for (int64_t i = 0; i < m; ++i) {
      const double g = double(dy[size_t(at[size_t(i)])]), xi = double(x[size_t(at[size_t(i)])]);
      const long double xhat = ((long double)xi - mu) * invstd;
      const double a = double((long double)(std::abs(xi) + std::abs(mu)) * std::abs(invstd));
      const double want =
          double((long double)gamma * invstd * (g - sum_dy_l / md - xhat * sum_dy_xhat_l / md));
      const double bound =
          double(std::numeric_limits<T>::denorm_min()) * (1 + std::abs(gamma)) *
              (1 + std::abs(invstd)) *
              (2 + std::abs(xi) + std::abs(mu) + std::abs(g) + md +
               (abs_dy + (1 + max_a) * abs_dy_a) / md) +
          f * (std::abs(gamma * invstd) *
                   (std::abs(g) + abs_dy / md + a * abs_dy_a / md + max_a * abs_dy_a / md) +
               std::abs(want)) +
          std::abs(gamma * invstd) * (1 + a) * tiny / md;
      if (std::isnan(bound)) continue;
      expect_close("dx", at[size_t(i)], dx[size_t(at[size_t(i)])], want, bound);
    }
  }
}

}  // namespace
}  // namespace bnorm::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bnorm::fuzz::on_targets(data, size, [&] {
    FuzzedDataProvider in(data, size);
    if (in.ConsumeBool())
      bnorm::fuzz::run<float>(in);
    else
      bnorm::fuzz::run<double>(in);
  });
  return 0;
}
