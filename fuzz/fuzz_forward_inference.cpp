// libFuzzer harness: bnorm::forward_inference (float and double) against the
// documented formula evaluated in double, or a clean std::invalid_argument.
#include "fuzz/fuzz_common.hpp"

namespace bnorm::fuzz {
namespace {

template <class T>
void run(FuzzedDataProvider& in) {
  constexpr const char* fn = "forward_inference";
  const Shape shape = decode_shape(in);
  const double eps = decode_eps(in);
  const uint8_t present = in.ConsumeIntegral<uint8_t>();
  const uint8_t nulls = in.ConsumeIntegral<uint8_t>();
  const bool x_null = nulls == 255, y_null = nulls == 254, rm_null = nulls == 253,
             rv_null = nulls == 252;
  SplitMix rng{in.ConsumeIntegral<uint64_t>()};

  const bool valid_shape = shape_valid(shape);
  if (valid_shape && shape.numel() > kMaxNumel) return;
  const size_t numel = valid_shape ? size_t(shape.numel()) : kInvalidShapeNumel;
  const size_t c = shape.c >= 1 && shape.c <= kMaxNumel ? size_t(shape.c) : kInvalidShapeNumel;
  std::vector<T> x = valid_shape ? decode_tensor<T>(in, shape, rng) : std::vector<T>(numel, T(1));
  std::vector<T> weight = decode_params<T>(in, int64_t(c), rng, 1.0, 2.0);
  std::vector<T> bias = decode_params<T>(in, int64_t(c), rng, 0.0, 3.0);
  std::vector<T> rm = decode_params<T>(in, int64_t(c), rng, 0.0, 2.0);
  std::vector<T> rv = decode_params<T>(in, int64_t(c), rng, 1.0, 0.9);  // some negative
  std::vector<T> y(numel, T(7.25));
  const T* w = present & 1 ? weight.data() : nullptr;
  const T* b = present & 2 ? bias.data() : nullptr;
  const auto y_bytes = bytes_of(y);

  const bool valid = valid_shape && eps_valid(eps) && !x_null && !y_null && !rm_null && !rv_null;
  const bool threw = rejected(fn, [&] {
    forward_inference<T>(shape, x_null ? nullptr : x.data(), w, b, rm_null ? nullptr : rm.data(),
                         rv_null ? nullptr : rv.data(), y_null ? nullptr : y.data(), eps);
  });
  expect_outcome(fn, valid, threw);
  if (threw) {
    if (bytes_of(y) != y_bytes) fuzz_fail("forward_inference threw but wrote to y");
    return;
  }
  const double f = bound_factor<T>(1);
  for (int64_t k = 0; k < shape.c; ++k) {
    const double mu = double(rm[size_t(k)]);
    const double invstd = 1.0 / std::sqrt(double(rv[size_t(k)]) + eps);
    const double gamma = w ? double(weight[size_t(k)]) : 1.0;
    const double beta = b ? double(bias[size_t(k)]) : 0.0;
    if (!std::isfinite(mu) || !std::isfinite(invstd)) continue;  // NaN/Inf or var + eps < 0
    double max_abs = 0;
    for (double v : reference::gather_channel(shape, widen(x), k))
      max_abs = std::max(max_abs, std::abs(v));
    if (scale_overflows<T>(gamma, beta, invstd, max_abs + std::abs(mu))) continue;
    // invstd of T: the kernels may round 1/sqrt(var + eps) to T first.
    for (int64_t i = 0; i < shape.m(); ++i) {
      const int64_t sample = i / shape.s, pos = i % shape.s;
      const int64_t at = shape.layout == Layout::NCHW ? (sample * shape.c + k) * shape.s + pos
                                                      : (sample * shape.s + pos) * shape.c + k;
      const double xi = double(x[size_t(at)]);
      // In long double: gamma * (x - mean) may underflow double where the value does not.
      const double want = double((long double)gamma * ((long double)xi - mu) * invstd + beta);
      const double bound =
          double(std::numeric_limits<T>::denorm_min()) * (2 + std::abs(xi) + std::abs(mu)) +
          f * (std::abs(gamma) * (std::abs(xi) + std::abs(mu)) * invstd + std::abs(beta) +
               std::abs(want));
      context() = "channel " + std::to_string(k) + " of " + describe(shape) + ", x " + num(xi) +
                  ", running mean " + num(mu) + ", running var " + num(double(rv[size_t(k)])) +
                  ", eps " + num(eps) + ", gamma " + num(gamma) + ", beta " + num(beta);
      if (std::isnan(bound)) continue;
      expect_close("y", at, y[size_t(at)], want, bound);
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
