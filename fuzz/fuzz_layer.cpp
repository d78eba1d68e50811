// libFuzzer harness: bnorm::BatchNorm<T> (the MPI-free layer) through a
// fuzzed sequence of train/eval switches, forwards and backwards, against a
// shadow of its state kept in double: the batch counter, the running
// statistics (updated from the layer's own previous values by the header's
// formulas), y from the double reference or the inference formula, and the
// gradients from the header's formulas. A rejected call must throw
// std::invalid_argument and change none of the state.
#include "fuzz/fuzz_common.hpp"

namespace bnorm::fuzz {
namespace {

template <class T>
struct State {
  std::vector<T> weight, bias, running_mean, running_var;
  int64_t batches = 0;
  // Bytes, not values: a NaN parameter equals itself here.
  bool operator==(const State& o) const {
    return bytes_of(weight) == bytes_of(o.weight) && bytes_of(bias) == bytes_of(o.bias) &&
           bytes_of(running_mean) == bytes_of(o.running_mean) &&
           bytes_of(running_var) == bytes_of(o.running_var) && batches == o.batches;
  }
};

template <class T>
State<T> state_of(const BatchNorm<T>& bn) {
  return {std::vector<T>(bn.weight().begin(), bn.weight().end()),
          std::vector<T>(bn.bias().begin(), bn.bias().end()),
          std::vector<T>(bn.running_mean().begin(), bn.running_mean().end()),
          std::vector<T>(bn.running_var().begin(), bn.running_var().end()),
          bn.num_batches_tracked()};
}

template <class T>
std::string first_change(const State<T>& a, const State<T>& b) {
  for (size_t k = 0; k < a.running_mean.size(); ++k) {
    if (bytes_of(std::vector<T>{a.running_mean[k]}) != bytes_of(std::vector<T>{b.running_mean[k]}))
      return "running_mean[" + std::to_string(k) + "] " + num(double(a.running_mean[k])) + " -> " +
             num(double(b.running_mean[k]));
    if (bytes_of(std::vector<T>{a.running_var[k]}) != bytes_of(std::vector<T>{b.running_var[k]}))
      return "running_var[" + std::to_string(k) + "] " + num(double(a.running_var[k])) + " -> " +
             num(double(b.running_var[k]));
  }
  return "none found, sizes " + std::to_string(a.running_mean.size()) + "/" +
         std::to_string(b.running_mean.size()) + " " + std::to_string(a.running_var.size()) + "/" +
         std::to_string(b.running_var.size());
}

template <class T>
void run(FuzzedDataProvider& in) {
  // Constructor arguments, sometimes invalid.
  const uint8_t features_mode = in.ConsumeIntegral<uint8_t>();
  const int64_t features =
      features_mode < 240 ? in.ConsumeIntegralInRange<int64_t>(1, 6) : wild_extent(in);
  const double eps = decode_eps(in);
  const std::optional<double> momentum = decode_momentum(in);
  const bool affine = in.ConsumeBool(), track = in.ConsumeBool();
  const bool valid_layer =
      features >= 1 && features <= kMaxNumel && eps_valid(eps) && momentum_valid(momentum);
  if (features > kMaxNumel) return;  // would allocate that many parameters
  std::optional<BatchNorm<T>> layer;
  const bool threw =
      rejected("BatchNorm", [&] { layer.emplace(features, eps, momentum, affine, track); });
  expect_outcome("BatchNorm", valid_layer, threw);
  if (threw) return;
  BatchNorm<T>& bn = *layer;
  SplitMix rng{in.ConsumeIntegral<uint64_t>()};
  if (affine) {
    // Ordinary parameters: fuzz_forward_training and fuzz_backward cover
    // special and extreme ones; this harness is about the layer's state.
    for (auto& w : bn.weight()) w = T(1.0 + rng.normal());
    for (auto& b : bn.bias()) b = T(rng.normal());
  }

  // What the last successful forward used, for the backward oracle.
  bool have_forward = false, used_batch_stats = false;
  Shape last{};
  std::vector<T> last_x;
  std::vector<double> last_mean, last_invstd;
  // Channels whose statistics have no finite double reference (values near
  // double's limit): no reference for their backward either.
  std::vector<bool> last_overflowed;

  for (int op = 0; op < 6 && in.remaining_bytes() > 0; ++op) {
    const uint8_t kind = in.ConsumeIntegral<uint8_t>() % 4;
    if (kind == 0) {
      bn.train(in.ConsumeBool());
      continue;
    }
    const State<T> before = state_of(bn);
    if (kind == 3) {  // backward
      const int64_t want_size = have_forward ? last.numel() : 0;
      const bool wrong_size = in.ConsumeIntegral<uint8_t>() > 230;
      const size_t size = size_t(want_size) + (wrong_size ? 1 : 0);
      Shape dy_shape = last;
      std::vector<T> dy = have_forward && !wrong_size ? decode_tensor<T>(in, dy_shape, rng)
                                                      : std::vector<T>(size, T(1));
      typename BatchNorm<T>::Gradients g;
      const bool bthrew = rejected("BatchNorm::backward", [&] { g = bn.backward(dy); });
      expect_outcome("BatchNorm::backward", have_forward && !wrong_size, bthrew);
      if (!(state_of(bn) == before)) fuzz_fail("BatchNorm::backward changed the layer's state");
      if (bthrew) continue;
      const int64_t m = last.m();
      const double f = bound_factor<T>(m);
      for (int64_t k = 0; k < last.c; ++k) {
        const double mu = last_mean[size_t(k)], is = last_invstd[size_t(k)];
        const double gamma = affine ? double(before.weight[size_t(k)]) : 1.0;
        if (!std::isfinite(mu) || !std::isfinite(is) || !std::isfinite(gamma) ||
            last_overflowed[size_t(k)])
          continue;
        long double sum_dy = 0, sum_dy_xhat = 0;
        double abs_dy = 0, abs_dy_a = 0, max_a = 0, spread = 0, max_dy = 0;
        for (int64_t i = 0; i < m; ++i) {
          const int64_t sample = i / last.s, pos = i % last.s;
          const int64_t at = last.layout == Layout::NCHW ? (sample * last.c + k) * last.s + pos
                                                         : (sample * last.s + pos) * last.c + k;
          const double gi = double(dy[size_t(at)]), xi = double(last_x[size_t(at)]);
          const long double xhat = ((long double)xi - mu) * is;
          const double a = double((long double)(std::abs(xi) + std::abs(mu)) * is);
          sum_dy += gi;
          sum_dy_xhat += gi * xhat;
          abs_dy += std::abs(gi);
          abs_dy_a += std::abs(gi) * a;
          max_a = std::max(max_a, a);
          spread = std::max(spread, std::abs(xi) + std::abs(mu));
          max_dy = std::max(max_dy, std::abs(gi));
        }
        if (!std::isfinite(abs_dy_a) || !std::isfinite(4 * abs_dy) ||
            !std::isfinite(abs_dy * spread))
          continue;
        if (known_overflow<T>(std::max({abs_dy, abs_dy_a, spread * double(m), abs_dy * spread})))
          continue;
        // Every product of two of dy, x - mean and invstd may round to T's
        // denormal grid and then be multiplied by the third.
        const double tiny =
            double(m) * double(std::numeric_limits<T>::denorm_min()) * (1 + is + spread + max_dy);
        // The layer's backward uses the mean its own forward computed, the
        // oracle the double reference's mean rounded to T; with batch
        // statistics the two differ by both sums' rounding, up to f * spread
        // for the kernel (the bound fuzz_forward_training holds save_mean to)
        // plus the reference's own double sum, which for T = double is as
        // coarse. sum dy * (x - mean) moves by |sum dy| times that: where one
        // |dy| near 1e100 meets an x near the mean, while other x of 1e-6
        // cancel to a mean of 5e-9, that is 50 ulps of dweight, and no order
        // of summation in backward can win it back, since the mean is an
        // input to backward, fixed by forward (and by y, which was
        // normalized with it). Running statistics are the same value for both.
        const double mean_error = used_batch_stats ? (f + bound_factor<double>(m)) * spread : 0.0;
        const double mean_shift = double(std::abs(sum_dy)) * mean_error * is;
        context() = "layer backward, channel " + std::to_string(k) + " of " + describe(last) +
                    (used_batch_stats ? " (batch statistics)" : " (running statistics)") +
                    ", mean " + num(mu) + ", invstd " + num(is) + ", gamma " + num(gamma) +
                    ", sum dy " + num(double(sum_dy)) + ", max |dy| " + num(max_dy) + ", spread " +
                    num(spread);
        if (affine) {
          expect_close("dbias", k, g.dbias[size_t(k)], double(sum_dy), f * abs_dy + tiny);
          if (!products_underflow<T>(max_dy, spread, is))
            expect_close("dweight", k, g.dweight[size_t(k)], double(sum_dy_xhat),
                         f * abs_dy_a + mean_shift + tiny);
        }
        if (products_underflow<T>(max_dy, spread, is)) continue;
        const double p1 = std::abs(gamma * is), p2 = p1 * is;
        const double smallest = double(std::numeric_limits<T>::min());
        if (scale_overflows<T>(gamma * is, 0, is * abs_dy_a, max_a) ||
            scale_overflows<T>(gamma * is, 0, is, 1.0) ||
            scale_overflows<T>(gamma, 0, is, max_dy + abs_dy) || (p1 != 0 && p1 < smallest) ||
            (p2 != 0 && p2 < smallest))
          continue;
        const double md = double(m);
        for (int64_t i = 0; i < m; ++i) {
          const int64_t sample = i / last.s, pos = i % last.s;
          const int64_t at = last.layout == Layout::NCHW ? (sample * last.c + k) * last.s + pos
                                                         : (sample * last.s + pos) * last.c + k;
          const double gi = double(dy[size_t(at)]), xi = double(last_x[size_t(at)]);
          const long double xhat = ((long double)xi - mu) * is;
          const double a = double((long double)(std::abs(xi) + std::abs(mu)) * is);
          // Through the moments after batch statistics; with the running
          // statistics held constant (frozen moments) after eval.
          const double want =
              used_batch_stats
                  ? double((long double)gamma * is * (gi - sum_dy / md - xhat * sum_dy_xhat / md))
                  : gamma * is * gi;
          const double bound =
              double(std::numeric_limits<T>::denorm_min()) * (1 + std::abs(gamma)) * (1 + is) *
                  (2 + std::abs(xi) + std::abs(mu) + std::abs(gi) + md +
                   (abs_dy + (1 + max_a) * abs_dy_a) / md) +
              f * (p1 * (std::abs(gi) + abs_dy / md + a * abs_dy_a / md + max_a * abs_dy_a / md) +
                   std::abs(want)) +
              p1 * (1 + a) * tiny / md +
              // The mean's error moves x - mean by mean_error and
              // sum dy * xhat by mean_shift.
              (used_batch_stats ? p1 * (mean_error * is * abs_dy_a + a * mean_shift) / md : 0.0);
          if (std::isnan(bound)) continue;
          expect_close("dx", at, g.dx[size_t(at)], want, bound);
        }
      }
      continue;
    }
    // forward (kind 1 or 2)
    Shape shape = decode_shape(in);
    const uint8_t mismatch = in.ConsumeIntegral<uint8_t>();
    if (mismatch > 240 && shape.c != features) shape.c = features + 1;  // wrong channel count
    const bool valid_shape = shape_valid(shape);
    if (valid_shape && shape.numel() > kMaxNumel) continue;
    std::vector<T> x =
        valid_shape ? decode_tensor<T>(in, shape, rng) : std::vector<T>(kInvalidShapeNumel, T(1));
    if (mismatch > 250 && !x.empty()) x.pop_back();  // wrong size
    const bool batch_stats = bn.training() || !track;
    const bool valid = valid_shape && shape.c == features && int64_t(x.size()) == shape.numel() &&
                       (!batch_stats || shape.m() > 1);
    std::vector<T> y;
    const bool fthrew = rejected("BatchNorm::forward", [&] { y = bn.forward(shape, x); });
    expect_outcome("BatchNorm::forward", valid, fthrew);
    if (fthrew) {
      if (!(state_of(bn) == before)) fuzz_fail("BatchNorm::forward threw but changed the state");
      continue;
    }
    const State<T> after = state_of(bn);
    const bool updates = bn.training() && track;
    if (after.batches != before.batches + (updates ? 1 : 0))
      fuzz_fail("num_batches_tracked " + std::to_string(after.batches) + " after " +
                std::to_string(before.batches) + (updates ? " and a training step" : ""));
    if (bytes_of(after.weight) != bytes_of(before.weight) ||
        bytes_of(after.bias) != bytes_of(before.bias))
      fuzz_fail("forward changed weight or bias");
    if (!updates && (bytes_of(after.running_mean) != bytes_of(before.running_mean) ||
                     bytes_of(after.running_var) != bytes_of(before.running_var)))
      fuzz_fail(std::string("forward changed the running statistics outside training (") +
                (bn.training() ? "train" : "eval") + (track ? ", tracking" : ", not tracking") +
                ", first change: " + first_change(before, after) + ")");

    const int64_t m = shape.m();
    const double f = bound_factor<T>(m);
    const auto wx = widen(x);
    std::vector<double> mean(size_t(shape.c)), invstd(size_t(shape.c));
    std::vector<bool> overflowed(size_t(shape.c), false);
    reference::Forward ref;
    if (batch_stats)
      ref = reference::forward_training(shape, wx,
                                        affine ? widen(before.weight) : std::vector<double>{},
                                        affine ? widen(before.bias) : std::vector<double>{}, eps);
    const double factor = momentum ? *momentum : 1.0 / double(after.batches);
    for (int64_t k = 0; k < shape.c; ++k) {
      double max_abs = 0;
      for (double v : reference::gather_channel(shape, wx, k))
        max_abs = std::max(max_abs, std::abs(v));
      double mu, var, is;
      if (batch_stats) {
        mu = ref.mean[size_t(k)];
        var = ref.var[size_t(k)];
        is = ref.invstd[size_t(k)];
      } else {
        mu = double(before.running_mean[size_t(k)]);
        var = double(before.running_var[size_t(k)]);
        is = 1.0 / std::sqrt(var + eps);
      }
      mean[size_t(k)] = mu;
      invstd[size_t(k)] = is;
      // Near double's own limit the kernels' M2 * m (the unbiased running
      // variance) overflows where var does not.
      if (!std::isfinite(mu) || !std::isfinite(var) || !std::isfinite(is) ||
          !std::isfinite((max_abs + std::abs(mu)) * (max_abs + std::abs(mu)) * double(m) *
                         double(m))) {
        overflowed[size_t(k)] = true;  // no reference for backward either
        continue;
      }
      const double dvar =
          batch_stats ? f * var + f * f * (max_abs + std::abs(mu)) * (max_abs + std::abs(mu)) +
                            kVarianceFloor
                      : 0;
      const double rel_invstd = f + dvar / (2 * (var + eps));
      context() = "layer forward, channel " + std::to_string(k) + " of " + describe(shape) +
                  (batch_stats ? " (batch statistics)" : " (running statistics)") + ", mean " +
                  num(mu) + ", var " + num(var) + ", eps " + num(eps);
      if (updates) {
        const double rm0 = double(before.running_mean[size_t(k)]);
        const double rv0 = double(before.running_var[size_t(k)]);
        const double unbiased = var * double(m) / double(m - 1);
        expect_close("running_mean", k, after.running_mean[size_t(k)],
                     (1 - factor) * rm0 + factor * mu,
                     f * (std::abs((1 - factor) * rm0) + factor * max_abs));
        expect_close("running_var", k, after.running_var[size_t(k)],
                     (1 - factor) * rv0 + factor * unbiased,
                     f * std::abs((1 - factor) * rv0) + factor * (f * unbiased + dvar * 2));
      }
      const double gamma = affine ? double(before.weight[size_t(k)]) : 1.0;
      const double beta = affine ? double(before.bias[size_t(k)]) : 0.0;
      const double spread = max_abs + std::abs(mu);
      if (scale_overflows<T>(gamma, beta, is, spread)) continue;
      for (int64_t i = 0; i < m; ++i) {
        const int64_t sample = i / shape.s, pos = i % shape.s;
        const int64_t at = shape.layout == Layout::NCHW ? (sample * shape.c + k) * shape.s + pos
                                                        : (sample * shape.s + pos) * shape.c + k;
        const double xi = wx[size_t(at)];
        const double want_y = gamma * (xi - mu) * is + beta;
        const double bound =
            double(std::numeric_limits<T>::denorm_min()) * (2 + std::abs(xi) + spread) +
            f * (std::abs(gamma) * (std::abs(xi) + spread) * is + std::abs(beta) +
                 std::abs(want_y)) +
            std::abs(gamma * (xi - mu) * is) * rel_invstd;
        if (std::isnan(bound)) continue;
        expect_close("y", at, y[size_t(at)], want_y, bound);
      }
    }
    have_forward = true;
    used_batch_stats = batch_stats;
    last = shape;
    last_x = x;
    last_overflowed = overflowed;
    // The layer caches mean and invstd in T, and backward uses those.
    last_mean.assign(mean.size(), 0.0);
    last_invstd.assign(invstd.size(), 0.0);
    for (size_t k = 0; k < mean.size(); ++k) {
      last_mean[k] = double(T(mean[k]));
      last_invstd[k] = double(T(invstd[k]));
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
