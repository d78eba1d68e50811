// libFuzzer harness: bnorm::forward_training (float and double) against the
// double reference, or a clean std::invalid_argument (see fuzz_common.hpp).
#include "fuzz/fuzz_common.hpp"

namespace bnorm::fuzz {
namespace {

template <class T>
void run(FuzzedDataProvider& in) {
  constexpr const char* fn = "forward_training";
  const Shape shape = decode_shape(in);
  Options options;
  options.eps = decode_eps(in);
  options.momentum = decode_momentum(in);
  options.num_batches_tracked = decode_batches(in);
  const uint8_t present = in.ConsumeIntegral<uint8_t>();  // which optional pointers are given
  const uint8_t nulls = in.ConsumeIntegral<uint8_t>();    // x or y null, rarely
  const bool x_null = nulls == 255, y_null = nulls == 254;
  // Running statistics: both, neither, or (breaking the contract) one.
  const bool rm_given = present & 16, rv_given = (present & 32) ? !rm_given : rm_given;
  SplitMix rng{in.ConsumeIntegral<uint64_t>()};

  const bool valid_shape = shape_valid(shape);
  if (valid_shape && shape.numel() > kMaxNumel) return;
  const size_t numel = valid_shape ? size_t(shape.numel()) : kInvalidShapeNumel;
  const size_t c = shape.c >= 1 && shape.c <= kMaxNumel ? size_t(shape.c) : kInvalidShapeNumel;

  std::vector<T> x = valid_shape ? decode_tensor<T>(in, shape, rng) : std::vector<T>(numel, T(1));
  std::vector<T> weight = decode_params<T>(in, int64_t(c), rng, 1.0, 2.0);
  std::vector<T> bias = decode_params<T>(in, int64_t(c), rng, 0.0, 3.0);
  std::vector<T> rm = decode_params<T>(in, int64_t(c), rng, 0.0, 1.0);
  std::vector<T> rv = decode_params<T>(in, int64_t(c), rng, 1.0, 0.5);
  std::vector<T> y(numel, T(7.25)), save_mean(c, T(7.25)), save_invstd(c, T(7.25));
  const T* w = present & 1 ? weight.data() : nullptr;
  const T* b = present & 2 ? bias.data() : nullptr;
  T* sm = present & 4 ? save_mean.data() : nullptr;
  T* si = present & 8 ? save_invstd.data() : nullptr;
  T* rmp = rm_given ? rm.data() : nullptr;
  T* rvp = rv_given ? rv.data() : nullptr;
  const std::vector<T> rm_before = rm, rv_before = rv;
  const auto y_bytes = bytes_of(y), sm_bytes = bytes_of(save_mean),
             si_bytes = bytes_of(save_invstd), rm_bytes = bytes_of(rm), rv_bytes = bytes_of(rv);

  const bool track = rmp != nullptr && rvp != nullptr;
  const bool valid = valid_shape && shape.m() > 1 && eps_valid(options.eps) && !x_null && !y_null &&
                     rm_given == rv_given && momentum_valid(options.momentum) &&
                     (options.momentum || !track || options.num_batches_tracked >= 1);
  const bool threw = rejected(fn, [&] {
    forward_training<T>(shape, x_null ? nullptr : x.data(), w, b, y_null ? nullptr : y.data(), sm,
                        si, rmp, rvp, options);
  });
  expect_outcome(fn, valid, threw);
  if (threw) {
    if (bytes_of(y) != y_bytes || bytes_of(save_mean) != sm_bytes ||
        bytes_of(save_invstd) != si_bytes || bytes_of(rm) != rm_bytes || bytes_of(rv) != rv_bytes)
      fuzz_fail("forward_training threw but wrote to an output");
    return;
  }

  const auto want =
      reference::forward_training(shape, widen(x), w ? widen(weight) : std::vector<double>{},
                                  b ? widen(bias) : std::vector<double>{}, options.eps);
  const int64_t m = shape.m();
  const double f = bound_factor<T>(m);
  const double factor =
      options.momentum ? *options.momentum : 1.0 / double(options.num_batches_tracked);
  for (int64_t k = 0; k < shape.c; ++k) {
    const auto values = reference::gather_channel(shape, widen(x), k);
    double max_abs = 0;
    for (double v : values) max_abs = std::max(max_abs, std::abs(v));
    const double mu = want.mean[size_t(k)], var = want.var[size_t(k)];
    const double invstd = want.invstd[size_t(k)];
    // A channel whose double statistics overflow (or hold a NaN or Inf) has
    // no reference to compare with.
    if (!std::isfinite(mu) || !std::isfinite(var)) continue;
    // Near double's own limit the kernels' M2 * m (the unbiased running
    // variance) overflows where var does not.
    if (!std::isfinite((max_abs + std::abs(mu)) * (max_abs + std::abs(mu)) * double(m) * double(m)))
      continue;
    context() = "channel " + std::to_string(k) + " of " + describe(shape) + ", mean " + num(mu) +
                ", var " + num(var) + ", max |x| " + num(max_abs) + ", eps " + num(options.eps) +
                ", factor " + num(factor) +
                (sm ? ", got mean " + num(double(save_mean[size_t(k)])) : "");
    // Error of the variance: rounding, plus the square of the mean's error,
    // and double's denormal grid.
    const double dvar =
        f * var + f * f * (max_abs + std::abs(mu)) * (max_abs + std::abs(mu)) + kVarianceFloor;
    const double rel_invstd = f + dvar / (2 * (var + options.eps));
    if (sm) expect_close("save_mean", k, save_mean[size_t(k)], mu, f * max_abs);
    if (si) expect_close("save_invstd", k, save_invstd[size_t(k)], invstd, rel_invstd * invstd);
    if (track) {
      const double rm0 = double(rm_before[size_t(k)]), rv0 = double(rv_before[size_t(k)]);
      const double unbiased = var * double(m) / double(m - 1);
      expect_close("running_mean", k, rm[size_t(k)], (1 - factor) * rm0 + factor * mu,
                   f * (std::abs((1 - factor) * rm0) + factor * max_abs));
      expect_close("running_var", k, rv[size_t(k)], (1 - factor) * rv0 + factor * unbiased,
                   f * std::abs((1 - factor) * rv0) + factor * (f * unbiased + dvar * 2));
    }
    const double gamma = w ? double(weight[size_t(k)]) : 1.0;
    const double beta = b ? double(bias[size_t(k)]) : 0.0;
    if (scale_overflows<T>(gamma, beta, invstd, max_abs + std::abs(mu))) continue;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t sample = i / shape.s, pos = i % shape.s;
      const int64_t at = shape.layout == Layout::NCHW ? (sample * shape.c + k) * shape.s + pos
                                                      : (sample * shape.s + pos) * shape.c + k;
      const double xi = double(x[size_t(at)]);
      const double xhat = (xi - mu) * invstd;
      const double want_y = want.y[size_t(at)];
      // weight * invstd may itself round to T's denormal grid.
      const double bound =
          double(std::numeric_limits<T>::denorm_min()) * (2 + std::abs(xi) + max_abs) +
          f * (std::abs(gamma) * (std::abs(xi) + max_abs) * invstd + std::abs(beta) +
               std::abs(want_y)) +
          std::abs(gamma * xhat) * rel_invstd;
      // An ill-conditioned channel (var + eps at the bottom of double's range)
      // may have no finite bound: Inf * 0 above.
      if (!representable<T>(want_y) || std::isnan(bound)) continue;
      if (!(std::abs(double(y[size_t(at)]) - want_y) <= bound))
        fuzz_fail("channel " + std::to_string(k) + " of " + describe(shape) + ": mean " + num(mu) +
                  " var " + num(var) + " eps " + num(options.eps) + " gamma " + num(gamma) +
                  " beta " + num(beta) + " x " + num(xi) + ": y = " + num(double(y[size_t(at)])) +
                  ", reference " + num(want_y) + ", bound " + num(bound));
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
