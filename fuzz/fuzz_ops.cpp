// libFuzzer harness: the operations the plain-kernel harnesses do not reach,
// float and double: the fused layer (batch norm + residual + activation,
// training forward then backward from the input, and from the output where
// the activation is invertible; inference forward), Batch Renorm (training
// forward then backward) and ghost batch norm (training forward then
// backward, group by group). Each backward gets what its forward saved, as a
// network would. Oracles: the double reference (include/bnorm/reference*.hpp)
// for the forwards and the header's formulas, in long double, from the same
// saved statistics for the backwards.
//
// Values are ordinary (finite, scales 2^-20 to 2^32, constants and ties
// included, so that relu's mask meets exact zeros): NaN, Inf, the edges of
// the range and invalid arguments go through the same validation and
// kernels that fuzz_forward_training and fuzz_backward fuzz; here every call
// is valid and must not throw.
#include <bnorm/fused.hpp>
#include <bnorm/reference_fused.hpp>
#include <functional>

#include "fuzz/fuzz_common.hpp"

namespace bnorm::fuzz {
namespace {

int64_t ordinary_extent(FuzzedDataProvider& in, int64_t small_max, int64_t long_max) {
  return in.ConsumeIntegral<uint8_t>() < 220 ? in.ConsumeIntegralInRange<int64_t>(1, small_max)
                                             : in.ConsumeIntegralInRange<int64_t>(1, long_max);
}

Shape ordinary_shape(FuzzedDataProvider& in) {
  Shape s;
  s.n = ordinary_extent(in, 9, 64);
  s.c = ordinary_extent(in, 6, 40);
  s.s = ordinary_extent(in, 12, 1500);
  s.layout = in.ConsumeBool() ? Layout::NHWC : Layout::NCHW;
  return s;
}

int64_t at_of(const Shape& s, int64_t k, int64_t i) {
  const int64_t sample = i / s.s, pos = i % s.s;
  return s.layout == Layout::NCHW ? (sample * s.c + k) * s.s + pos : (sample * s.s + pos) * s.c + k;
}

// Per channel: normal values at a random scale and offset, a constant, or
// three values {offset - scale, offset, offset + scale} (exact ties, and
// exact zeros of z for relu when offset is 0).
template <class T>
std::vector<T> ordinary_tensor(FuzzedDataProvider& in, const Shape& shape, SplitMix& rng) {
  std::vector<T> out(size_t(shape.numel()));
  for (int64_t k = 0; k < shape.c; ++k) {
    const int kind = in.ConsumeIntegral<uint8_t>() % 3;
    const double scale = std::ldexp(1.0, in.ConsumeIntegralInRange<int>(-20, 20));
    const double offset = in.ConsumeBool()
                              ? 0.0
                              : (in.ConsumeBool() ? 1 : -1) * scale *
                                    std::ldexp(1.0, in.ConsumeIntegralInRange<int>(-4, 12));
    for (int64_t i = 0; i < shape.m(); ++i) {
      double v = offset;
      if (kind == 0) v += scale * rng.normal();
      if (kind == 2) v += scale * double(int(rng.next() % 3) - 1);
      out[size_t(at_of(shape, k, i))] = T(v);
    }
  }
  return out;
}

template <class T>
std::vector<T> ordinary_params(FuzzedDataProvider& in, int64_t c, SplitMix& rng, double center,
                               bool positive) {
  const double scale = std::ldexp(1.0, in.ConsumeIntegralInRange<int>(-8, 8));
  const bool zeros = in.ConsumeIntegral<uint8_t>() > 230;
  std::vector<T> out(static_cast<size_t>(c));
  for (auto& v : out) {
    const double value = zeros ? 0.0 : center + scale * rng.normal();
    v = T(positive ? std::abs(value) : value);
  }
  return out;
}

// The batch statistics of a channel and the errors the kernels' and the
// reference's sums leave in them (both sum in T or double, so both count):
// the mean within fe * max|x|, the variance within dvar (rounding of the
// sum of squares, plus the square of the mean's error), invstd relatively
// within rel_invstd.
struct Stats {
  double mu, var, is, max_abs, fe, dvar, rel_invstd;
};

template <class T>
Stats stats_of(const Shape& shape, const std::vector<double>& wx, int64_t k, double mu, double var,
               double is, double eps) {
  Stats s{mu, var, is, 0, 0, 0, 0};
  for (int64_t i = 0; i < shape.m(); ++i)
    s.max_abs = std::max(s.max_abs, std::abs(wx[size_t(at_of(shape, k, i))]));
  s.fe = bound_factor<T>(shape.m()) + bound_factor<double>(shape.m());
  const double spread = s.max_abs + std::abs(mu);
  s.dvar = s.fe * var + s.fe * s.fe * spread * spread + kVarianceFloor;
  s.rel_invstd = s.fe + s.dvar / (2 * (var + eps));
  return s;
}

// save_mean, save_invstd and (when present) the running statistics after
// one update with `factor`, against the batch statistics.
template <class T>
void check_statistics(const char* op, int64_t k, int64_t m, const Stats& st, T got_mean,
                      T got_invstd, const T* rm, const T* rv, double rm0, double rv0, double factor,
                      bool unbiased) {
  expect_close((std::string(op) + " save_mean").c_str(), k, got_mean, st.mu, st.fe * st.max_abs);
  expect_close((std::string(op) + " save_invstd").c_str(), k, got_invstd, st.is,
               st.rel_invstd * st.is);
  if (!rm) return;
  const double v = unbiased ? st.var * double(m) / double(m - 1) : st.var;
  const double dv = unbiased ? st.dvar * double(m) / double(m - 1) : st.dvar;
  expect_close((std::string(op) + " running_mean").c_str(), k, *rm,
               (1 - factor) * rm0 + factor * st.mu,
               st.fe * (std::abs((1 - factor) * rm0) + factor * st.max_abs));
  expect_close((std::string(op) + " running_var").c_str(), k, *rv, (1 - factor) * rv0 + factor * v,
               st.fe * std::abs((1 - factor) * rv0) + factor * (st.fe * v + 2 * dv));
}

// Error of z = gamma * (x - mu) * invstd * r + shift (+ residual) computed
// from statistics within st's errors: the rounding of every product and sum
// (fe times their magnitudes) plus invstd's relative error; err_r and
// err_shift are the errors of r and of the per-channel shift.
double z_bound(const Stats& st, double gamma, double x, double r, double err_r, double shift,
               double err_shift, double residual, double z) {
  const double t = std::abs((x - st.mu) * st.is);
  const double spread = std::abs(x) + st.max_abs + std::abs(st.mu);
  const double err_t = st.fe * spread * st.is + t * st.rel_invstd;
  return std::abs(gamma) * (err_t * std::abs(r) + t * err_r) + err_shift +
         st.fe * (std::abs(gamma) * spread * st.is * std::abs(r) + std::abs(shift) +
                  std::abs(residual) + std::abs(z)) +
         4 * std::numeric_limits<double>::min();
}

// Backward of one channel with given statistics (the header's formulas):
// dbias = sum dz, dweight = sign * (r * sum dz * xhat + d * sum dz),
// dx = gamma * r * invstd * (dz - sum dz / m - xhat * sum dz * xhat / m),
// xhat = (x - mean) * invstd. dz is exact in double (dy, or dy * slope).
template <class T>
void check_channel_backward(const char* op, const Shape& shape, int64_t k,
                            const std::vector<double>& dz, const std::vector<T>& x, double mu,
                            double is, double gamma, double r, double d, double sign,
                            const param_t<T>* dweight, const param_t<T>* dbias, const T* dx) {
  const int64_t m = shape.m();
  const double md = double(m), f = bound_factor<T>(m);
  long double s1 = 0, s2 = 0;
  double abs_dy = 0, abs_dy_a = 0, max_a = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t at = at_of(shape, k, i);
    const double g = dz[size_t(at)], xi = double(x[size_t(at)]);
    const long double xhat = ((long double)xi - mu) * is;
    const double a = (std::abs(xi) + std::abs(mu)) * std::abs(is);
    s1 += g;
    s2 += g * xhat;
    abs_dy += std::abs(g);
    abs_dy_a += std::abs(g) * a;
    max_a = std::max(max_a, a);
  }
  const double tiny = md * double(std::numeric_limits<T>::denorm_min()) * (1 + std::abs(is));
  context() = std::string(op) + " backward, channel " + std::to_string(k) + " of " +
              describe(shape) + ", mean " + num(mu) + ", invstd " + num(is) + ", gamma " +
              num(gamma) + ", r " + num(r) + ", d " + num(d) + ", sum dz " + num(double(s1));
  if (dbias) expect_close("dbias", k, dbias[k], double(s1), f * abs_dy + tiny);
  if (dweight)
    expect_close("dweight", k, dweight[k], sign * double(r * s2 + d * s1),
                 f * (std::abs(r) * abs_dy_a + std::abs(d) * abs_dy) + tiny);
  if (!dx) return;
  const double p1 = std::abs(gamma * r * is);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t at = at_of(shape, k, i);
    const double g = dz[size_t(at)], xi = double(x[size_t(at)]);
    const long double xhat = ((long double)xi - mu) * is;
    const double a = (std::abs(xi) + std::abs(mu)) * std::abs(is);
    const double want = double((long double)gamma * r * is * (g - s1 / md - xhat * s2 / md));
    const double bound =
        f * (p1 * (std::abs(g) + abs_dy / md + (a + max_a) * abs_dy_a / md) + std::abs(want)) +
        p1 * (1 + a) * tiny + double(std::numeric_limits<T>::denorm_min()) * (1 + p1 * is);
    expect_close("dx", at, dx[size_t(at)], want, bound);
  }
}

struct Common {
  double eps;
  std::optional<double> momentum;
  int64_t batches;
  bool unbiased, track;
  double factor(int64_t group = 0) const {
    return momentum ? *momentum : 1.0 / double(batches + group);
  }
};

Common decode_common(FuzzedDataProvider& in) {
  static constexpr double kEps[] = {1e-5, 1e-3, 0.1, 1e-12, 2.0};
  static constexpr double kMomentum[] = {0.1, 0.0, 1.0, 0.5};
  Common c;
  c.eps = kEps[in.ConsumeIntegralInRange<size_t>(0, std::size(kEps) - 1)];
  const size_t mi = in.ConsumeIntegralInRange<size_t>(0, std::size(kMomentum));
  if (mi < std::size(kMomentum)) c.momentum = kMomentum[mi];
  c.batches = in.ConsumeIntegralInRange<int64_t>(1, 5);
  c.unbiased = in.ConsumeBool();
  c.track = in.ConsumeBool();
  return c;
}

Options options_of(const Common& c) {
  Options o;
  o.eps = c.eps;
  o.momentum = c.momentum;
  o.num_batches_tracked = c.batches;
  o.unbiased_running_var = c.unbiased;
  return o;
}

template <class T>
void no_throw(const char* fn, const std::function<void()>& call) {
  if (rejected(fn, call)) fuzz_fail(std::string(fn) + ": rejected valid arguments");
}

// ---- fused ----

template <class T>
void fused(FuzzedDataProvider& in, const Shape& shape, const Common& cm, SplitMix& rng) {
  Epilogue e;
  const uint8_t act = in.ConsumeIntegral<uint8_t>() % 3;
  e.act = static_cast<Activation>(act);
  static constexpr double kSlope[] = {0.01, 0.2, 1.0, 0.0, 3.0};
  e.negative_slope = kSlope[in.ConsumeIntegralInRange<size_t>(0, std::size(kSlope) - 1)];
  e.abs_weight = in.ConsumeBool();
  e.weight_eps = in.ConsumeBool() ? 1e-5 : 0.5;
  const uint8_t present = in.ConsumeIntegral<uint8_t>();
  const bool has_w = present & 1, has_b = present & 2, has_r = present & 4;
  const int64_t c = shape.c;
  std::vector<T> x = ordinary_tensor<T>(in, shape, rng);
  std::vector<T> residual = has_r ? ordinary_tensor<T>(in, shape, rng) : std::vector<T>{};
  std::vector<T> dy = ordinary_tensor<T>(in, shape, rng);
  std::vector<T> w = ordinary_params<T>(in, c, rng, 1.0, false);
  std::vector<T> b = ordinary_params<T>(in, c, rng, 0.0, false);
  std::vector<T> rm = ordinary_params<T>(in, c, rng, 0.0, false);
  std::vector<T> rv = ordinary_params<T>(in, c, rng, 1.0, true);
  const std::vector<T> rm0 = rm, rv0 = rv;
  const T* wp = has_w ? w.data() : nullptr;
  const T* bp = has_b ? b.data() : nullptr;
  const T* rp = has_r ? residual.data() : nullptr;
  const double slope = e.act == Activation::leaky_relu ? e.negative_slope : 1.0;
  const double lipschitz = std::max(1.0, slope);
  const auto gamma_of = [&](int64_t k) {
    const double wk = has_w ? double(w[size_t(k)]) : 1.0;
    return e.abs_weight ? std::abs(wk) + e.weight_eps : wk;
  };
  const auto wx = widen(x);
  const double u = unit_roundoff<T>();

  // Inference forward.
  if (in.ConsumeBool()) {
    std::vector<T> y(x.size());
    no_throw<T>("fused_forward_inference", [&] {
      fused_forward_inference<T>(shape, x.data(), rp, wp, bp, rm.data(), rv.data(), y.data(),
                                 cm.eps, e);
    });
    const auto want = reference::fused_forward_inference(
        shape, wx, has_r ? widen(residual) : std::vector<double>{},
        has_w ? widen(w) : std::vector<double>{}, has_b ? widen(b) : std::vector<double>{},
        widen(rm), widen(rv), cm.eps, e);
    for (int64_t k = 0; k < c; ++k) {
      const double is = 1 / std::sqrt(double(rv[size_t(k)]) + cm.eps);
      Stats st{double(rm[size_t(k)]), 0, is, 0, 2 * bound_factor<T>(1), 0, 0};
      st.rel_invstd = st.fe;
      const double beta = has_b ? double(b[size_t(k)]) : 0.0;
      context() = "fused inference, channel " + std::to_string(k) + " of " + describe(shape) +
                  ", running mean " + num(st.mu) + ", running var " + num(double(rv[size_t(k)]));
      for (int64_t i = 0; i < shape.m(); ++i) {
        const int64_t at = at_of(shape, k, i);
        const double r = has_r ? double(residual[size_t(at)]) : 0.0;
        const double z = gamma_of(k) * (wx[size_t(at)] - st.mu) * is + beta + r;
        const double bound =
            lipschitz * z_bound(st, gamma_of(k), wx[size_t(at)], 1, 0, beta, 0, r, z) +
            u * std::abs(want[size_t(at)]);
        expect_close("y", at, y[size_t(at)], want[size_t(at)], bound);
      }
    }
    return;
  }

  // Training forward.
  std::vector<T> y(x.size()), sm(static_cast<size_t>(c)), si(static_cast<size_t>(c));
  const Options opt = options_of(cm);
  no_throw<T>("fused_forward_training", [&] {
    fused_forward_training<T>(shape, x.data(), rp, wp, bp, y.data(), sm.data(), si.data(),
                              cm.track ? rm.data() : nullptr, cm.track ? rv.data() : nullptr, opt,
                              e);
  });
  const auto ref = reference::forward_training(shape, wx, {}, {}, cm.eps);
  for (int64_t k = 0; k < c; ++k) {
    const Stats st = stats_of<T>(shape, wx, k, ref.mean[size_t(k)], ref.var[size_t(k)],
                                 ref.invstd[size_t(k)], cm.eps);
    context() = "fused training, channel " + std::to_string(k) + " of " + describe(shape) +
                ", mean " + num(st.mu) + ", var " + num(st.var) + ", eps " + num(cm.eps);
    check_statistics<T>("fused", k, shape.m(), st, sm[size_t(k)], si[size_t(k)],
                        cm.track ? &rm[size_t(k)] : nullptr, cm.track ? &rv[size_t(k)] : nullptr,
                        double(rm0[size_t(k)]), double(rv0[size_t(k)]), cm.factor(), cm.unbiased);
    const double beta = has_b ? double(b[size_t(k)]) : 0.0;
    for (int64_t i = 0; i < shape.m(); ++i) {
      const int64_t at = at_of(shape, k, i);
      const double r = has_r ? double(residual[size_t(at)]) : 0.0;
      const double z = gamma_of(k) * (wx[size_t(at)] - st.mu) * st.is + beta + r;
      const double want = reference::activation(e, z);
      const double bound =
          lipschitz * z_bound(st, gamma_of(k), wx[size_t(at)], 1, 0, beta, 0, r, z) +
          u * std::abs(want);
      expect_close("y", at, y[size_t(at)], want, bound);
    }
  }

  // Backward from the input, with what the forward saved and its y.
  std::vector<T> dx(x.size()), dres(x.size());
  std::vector<T> dw(static_cast<size_t>(c)), db(static_cast<size_t>(c));
  no_throw<T>("fused_backward", [&] {
    fused_backward<T>(shape, dy.data(), y.data(), x.data(), wp, sm.data(), si.data(), dx.data(),
                      dw.data(), db.data(), dres.data(), e);
  });
  // act'(z) from y, as the header defines it.
  std::vector<double> dz(x.size());
  for (size_t i = 0; i < dz.size(); ++i) {
    const double deriv = e.act == Activation::identity ? 1.0
                         : double(y[i]) > 0            ? 1.0
                         : e.act == Activation::relu   ? 0.0
                                                       : e.negative_slope;
    dz[i] = double(dy[i]) * deriv;
  }
  for (int64_t k = 0; k < c; ++k) {
    const double sign = e.abs_weight && has_w && std::signbit(double(w[size_t(k)])) ? -1.0 : 1.0;
    check_channel_backward<T>("fused", shape, k, dz, x, double(sm[size_t(k)]),
                              double(si[size_t(k)]), gamma_of(k), 1.0, 0.0, sign, dw.data(),
                              db.data(), dx.data());
    for (int64_t i = 0; i < shape.m(); ++i) {
      const int64_t at = at_of(shape, k, i);
      // The kernel holds the slope in param_t<T> (one rounding of the
      // double Epilogue::negative_slope) before the product's own.
      expect_close("dresidual", at, dres[size_t(at)], dz[size_t(at)],
                   2 * u * std::abs(dz[size_t(at)]));
    }
  }

  // Backward from the output: invertible activations, no residual.
  const bool invertible =
      e.act == Activation::identity || (e.act == Activation::leaky_relu && e.negative_slope > 0);
  bool weight_ok = true;
  for (int64_t k = 0; k < c && has_w && !e.abs_weight; ++k)
    weight_ok = weight_ok && double(w[size_t(k)]) != 0;
  if (!invertible || has_r || !weight_ok) return;
  std::vector<T> dx2(x.size()), dw2(static_cast<size_t>(c)), db2(static_cast<size_t>(c));
  no_throw<T>("fused_backward_from_output", [&] {
    fused_backward_from_output<T>(shape, dy.data(), y.data(), wp, bp, si.data(), dx2.data(),
                                  dw2.data(), db2.data(), e);
  });
  // x_hat recovered from y carries about u_T * (|x_hat| + |beta| / gamma_eff)
  // (the header; y's own rounding divided by gamma), on top of the error y
  // has: the gradients move by that times the sums they multiply.
  for (int64_t k = 0; k < c; ++k) {
    const double gamma = gamma_of(k), beta = has_b ? double(b[size_t(k)]) : 0.0;
    const double sign = e.abs_weight && has_w && std::signbit(double(w[size_t(k)])) ? -1.0 : 1.0;
    const double mu = double(sm[size_t(k)]), is = double(si[size_t(k)]);
    const int64_t m = shape.m();
    const double md = double(m), f = bound_factor<T>(m);
    // xhat as the kernel sees it: from y, exact up to the error below.
    long double s1 = 0, s2 = 0;
    double abs_dz = 0, abs_dz_h = 0, max_h = 0, max_err_h = 0;
    std::vector<double> xhat(static_cast<size_t>(m)), err_h(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) {
      const int64_t at = at_of(shape, k, i);
      const double yi = double(y[size_t(at)]);
      const double zi = yi > 0 || e.act == Activation::identity ? yi : yi / e.negative_slope;
      xhat[size_t(i)] = (zi - beta) / gamma;
      const double h = std::abs(xhat[size_t(i)]);
      err_h[size_t(i)] =
          (4 * u + f) * (h + std::abs(beta / gamma) + std::abs(zi / gamma)) +
          4 * double(std::numeric_limits<T>::denorm_min()) / (std::abs(gamma) * slope);
      s1 += dz[size_t(at)];
      s2 += dz[size_t(at)] * xhat[size_t(i)];
      abs_dz += std::abs(dz[size_t(at)]);
      abs_dz_h += std::abs(dz[size_t(at)]) * (h + err_h[size_t(i)]);
      max_h = std::max(max_h, h + err_h[size_t(i)]);
      max_err_h = std::max(max_err_h, err_h[size_t(i)]);
    }
    double s2_err = 0;
    for (int64_t i = 0; i < m; ++i)
      s2_err += std::abs(dz[size_t(at_of(shape, k, i))]) * err_h[size_t(i)];
    context() = "fused backward from output, channel " + std::to_string(k) + " of " +
                describe(shape) + ", mean " + num(mu) + ", invstd " + num(is) + ", gamma " +
                num(gamma) + ", beta " + num(beta) + ", sum dz " + num(double(s1));
    const double tiny = md * double(std::numeric_limits<T>::denorm_min()) * (1 + is);
    expect_close("dbias", k, db2[size_t(k)], double(s1), f * abs_dz + tiny);
    expect_close("dweight", k, dw2[size_t(k)], sign * double(s2), f * abs_dz_h + s2_err + tiny);
    const double p1 = std::abs(gamma * is);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t at = at_of(shape, k, i);
      const double g = dz[size_t(at)], h = xhat[size_t(i)];
      const double want = double((long double)gamma * is * (g - s1 / md - h * s2 / md));
      const double bound =
          f * (p1 * (std::abs(g) + abs_dz / md + (std::abs(h) + max_h) * abs_dz_h / md) +
               std::abs(want)) +
          p1 * (err_h[size_t(i)] * (abs_dz_h / md) +
                (std::abs(h) + err_h[size_t(i)]) * s2_err / md) +
          p1 * tiny + double(std::numeric_limits<T>::denorm_min()) * (1 + p1);
      expect_close("dx", at, dx2[size_t(at)], want, bound);
    }
  }
}

// ---- Batch Renorm ----

template <class T>
void renorm(FuzzedDataProvider& in, const Shape& shape, Common cm, SplitMix& rng) {
  static constexpr double kRmax[] = {1.0, 3.0, 1.5, 100.0};
  static constexpr double kDmax[] = {0.0, 5.0, 0.5, 100.0};
  RenormLimits lim;
  lim.rmax = kRmax[in.ConsumeIntegralInRange<size_t>(0, std::size(kRmax) - 1)];
  lim.dmax = kDmax[in.ConsumeIntegralInRange<size_t>(0, std::size(kDmax) - 1)];
  if (!cm.momentum) cm.momentum = 0.1;  // the reference takes a momentum
  const int64_t c = shape.c;
  const bool has_w = in.ConsumeBool(), has_b = in.ConsumeBool();
  std::vector<T> x = ordinary_tensor<T>(in, shape, rng);
  std::vector<T> dy = ordinary_tensor<T>(in, shape, rng);
  std::vector<T> w = ordinary_params<T>(in, c, rng, 1.0, false);
  std::vector<T> b = ordinary_params<T>(in, c, rng, 0.0, false);
  std::vector<T> rm = ordinary_params<T>(in, c, rng, 0.0, false);
  std::vector<T> rv = ordinary_params<T>(in, c, rng, 1.0, true);
  const std::vector<T> rm0 = rm, rv0 = rv;
  std::vector<T> y(x.size()), sm(static_cast<size_t>(c)), si(static_cast<size_t>(c)),
      r(static_cast<size_t>(c)), d(static_cast<size_t>(c));
  const T* wp = has_w ? w.data() : nullptr;
  const T* bp = has_b ? b.data() : nullptr;
  no_throw<T>("batch_renorm_forward_training", [&] {
    batch_renorm_forward_training<T>(shape, x.data(), wp, bp, y.data(), sm.data(), si.data(),
                                     r.data(), d.data(), rm.data(), rv.data(), lim, options_of(cm));
  });
  const auto wx = widen(x);
  const auto ref = reference::batch_renorm_forward_training(
      shape, wx, has_w ? widen(w) : std::vector<double>{}, has_b ? widen(b) : std::vector<double>{},
      widen(rm0), widen(rv0), lim.rmax, lim.dmax, *cm.momentum, cm.eps, cm.unbiased);
  for (int64_t k = 0; k < c; ++k) {
    const Stats st = stats_of<T>(shape, wx, k, ref.mean[size_t(k)], ref.var[size_t(k)],
                                 ref.invstd[size_t(k)], cm.eps);
    const double gamma = has_w ? double(w[size_t(k)]) : 1.0;
    const double beta = has_b ? double(b[size_t(k)]) : 0.0;
    const double sigma = std::sqrt(double(rv0[size_t(k)]) + cm.eps);
    const double rk = ref.r[size_t(k)], dk = ref.d[size_t(k)];
    // r = sigma_B / sigma: invstd's error plus sigma's and the division's
    // rounding; d = (mean - running_mean) / sigma: the mean's error and the
    // rounding of the difference and the division. Clipping only shrinks
    // them.
    const double err_r = std::abs(rk) * (st.rel_invstd + 2 * st.fe);
    const double err_d =
        st.fe * (st.max_abs + std::abs(st.mu) + std::abs(double(rm0[size_t(k)]))) / sigma +
        2 * st.fe * std::abs(dk);
    context() = "renorm forward, channel " + std::to_string(k) + " of " + describe(shape) +
                ", mean " + num(st.mu) + ", var " + num(st.var) + ", eps " + num(cm.eps) + ", r " +
                num(rk) + ", d " + num(dk);
    check_statistics<T>("renorm", k, shape.m(), st, sm[size_t(k)], si[size_t(k)], &rm[size_t(k)],
                        &rv[size_t(k)], double(rm0[size_t(k)]), double(rv0[size_t(k)]),
                        *cm.momentum, cm.unbiased);
    expect_close("r", k, r[size_t(k)], rk, err_r);
    expect_close("d", k, d[size_t(k)], dk, err_d);
    for (int64_t i = 0; i < shape.m(); ++i) {
      const int64_t at = at_of(shape, k, i);
      const double want = ref.y[size_t(at)];
      const double bound = z_bound(st, gamma, wx[size_t(at)], rk, err_r, gamma * dk + beta,
                                   std::abs(gamma) * err_d, 0, want);
      expect_close("y", at, y[size_t(at)], want, bound);
    }
  }
  std::vector<T> dx(x.size()), dw(static_cast<size_t>(c)), db(static_cast<size_t>(c));
  no_throw<T>("batch_renorm_backward", [&] {
    batch_renorm_backward<T>(shape, dy.data(), x.data(), wp, sm.data(), si.data(), r.data(),
                             d.data(), dx.data(), dw.data(), db.data());
  });
  const auto wdy = widen(dy);
  for (int64_t k = 0; k < c; ++k)
    check_channel_backward<T>("renorm", shape, k, wdy, x, double(sm[size_t(k)]),
                              double(si[size_t(k)]), has_w ? double(w[size_t(k)]) : 1.0,
                              double(r[size_t(k)]), double(d[size_t(k)]), 1.0, dw.data(), db.data(),
                              dx.data());
}

// ---- ghost batch norm ----

template <class T>
void ghost(FuzzedDataProvider& in, const Shape& shape, const Common& cm, SplitMix& rng) {
  const int64_t vbs = in.ConsumeIntegralInRange<int64_t>(2, std::max<int64_t>(2, shape.n + 1));
  const int64_t groups = ghost_groups(shape.n, vbs);
  const int64_t last_n = shape.n - (groups - 1) * vbs;
  if (last_n * shape.s <= 1) return;  // the contract needs m > 1 in every group
  const int64_t c = shape.c;
  const bool has_w = in.ConsumeBool(), has_b = in.ConsumeBool();
  std::vector<T> x = ordinary_tensor<T>(in, shape, rng);
  std::vector<T> dy = ordinary_tensor<T>(in, shape, rng);
  std::vector<T> w = ordinary_params<T>(in, c, rng, 1.0, false);
  std::vector<T> b = ordinary_params<T>(in, c, rng, 0.0, false);
  std::vector<T> rm = ordinary_params<T>(in, c, rng, 0.0, false);
  std::vector<T> rv = ordinary_params<T>(in, c, rng, 1.0, true);
  const std::vector<T> rm0 = rm, rv0 = rv;
  const size_t gc = size_t(groups * c);
  std::vector<T> y(x.size()), sm(gc), si(gc);
  const T* wp = has_w ? w.data() : nullptr;
  const T* bp = has_b ? b.data() : nullptr;
  no_throw<T>("ghost_forward_training", [&] {
    ghost_forward_training<T>(shape, vbs, x.data(), wp, bp, y.data(), sm.data(), si.data(),
                              cm.track ? rm.data() : nullptr, cm.track ? rv.data() : nullptr,
                              options_of(cm));
  });
  std::vector<T> dx(x.size()), dw(static_cast<size_t>(c)), db(static_cast<size_t>(c));
  no_throw<T>("ghost_backward", [&] {
    ghost_backward<T>(shape, vbs, dy.data(), x.data(), wp, sm.data(), si.data(), dx.data(),
                      dw.data(), db.data());
  });
  // Running statistics through the groups in order, with their errors.
  std::vector<double> want_rm = widen(rm0), want_rv = widen(rv0);
  std::vector<double> err_rm(size_t(c), 0.0), err_rv(size_t(c), 0.0);
  // dweight and dbias: each group's sums, then the sum over groups.
  std::vector<long double> sum_dw(size_t(c), 0), sum_db(size_t(c), 0);
  std::vector<double> abs_dw(size_t(c), 0), abs_db(size_t(c), 0);
  for (int64_t g = 0; g < groups; ++g) {
    const Shape part{std::min(vbs, shape.n - g * vbs), shape.c, shape.s, shape.layout};
    const size_t offset = size_t(g * vbs * shape.c * shape.s), len = size_t(part.numel());
    const std::vector<T> px(x.begin() + long(offset), x.begin() + long(offset + len));
    const std::vector<double> wpx = widen(px);
    const auto ref =
        reference::forward_training(part, wpx, has_w ? widen(w) : std::vector<double>{},
                                    has_b ? widen(b) : std::vector<double>{}, cm.eps);
    const double factor = cm.factor(g);
    const int64_t m = part.m();
    for (int64_t k = 0; k < c; ++k) {
      const Stats st = stats_of<T>(part, wpx, k, ref.mean[size_t(k)], ref.var[size_t(k)],
                                   ref.invstd[size_t(k)], cm.eps);
      const double gamma = has_w ? double(w[size_t(k)]) : 1.0;
      const double beta = has_b ? double(b[size_t(k)]) : 0.0;
      context() = "ghost forward, group " + std::to_string(g) + " of " + std::to_string(groups) +
                  " (virtual batch " + std::to_string(vbs) + "), channel " + std::to_string(k) +
                  " of " + describe(shape) + ", mean " + num(st.mu) + ", var " + num(st.var);
      const size_t gk = size_t(g * c + k);
      check_statistics<T>("ghost", k, m, st, sm[gk], si[gk], nullptr, nullptr, 0, 0, 0, false);
      if (cm.track) {
        const double v = cm.unbiased ? st.var * double(m) / double(m - 1) : st.var;
        const double dv = cm.unbiased ? st.dvar * double(m) / double(m - 1) : st.dvar;
        double& rmk = want_rm[size_t(k)];
        double& rvk = want_rv[size_t(k)];
        err_rm[size_t(k)] = std::abs(1 - factor) * err_rm[size_t(k)] +
                            st.fe * (std::abs((1 - factor) * rmk) + factor * st.max_abs);
        err_rv[size_t(k)] = std::abs(1 - factor) * err_rv[size_t(k)] +
                            st.fe * std::abs((1 - factor) * rvk) + factor * (st.fe * v + 2 * dv);
        rmk = (1 - factor) * rmk + factor * st.mu;
        rvk = (1 - factor) * rvk + factor * v;
      }
      for (int64_t i = 0; i < m; ++i) {
        const int64_t at = at_of(part, k, i);
        const double want = ref.y[size_t(at)];
        const double bound = z_bound(st, gamma, wpx[size_t(at)], 1, 0, beta, 0, 0, want);
        expect_close("y", int64_t(offset) + at, y[offset + size_t(at)], want, bound);
      }
      // Backward of the group with its saved statistics.
      std::vector<double> pdy(len);
      for (size_t i = 0; i < len; ++i) pdy[i] = double(dy[offset + i]);
      std::vector<T> pdx(dx.begin() + long(offset), dx.begin() + long(offset + len));
      check_channel_backward<T>("ghost", part, k, pdy, px, double(sm[gk]), double(si[gk]), gamma,
                                1.0, 0.0, 1.0, nullptr, nullptr, pdx.data());
      const double mu = double(sm[gk]), is = double(si[gk]);
      long double s1 = 0, s2 = 0;
      double a1 = 0, a2 = 0;
      for (int64_t i = 0; i < m; ++i) {
        const double gi = pdy[size_t(at_of(part, k, i))], xi = wpx[size_t(at_of(part, k, i))];
        s1 += gi;
        s2 += gi * (((long double)xi - mu) * is);
        a1 += std::abs(gi);
        a2 += std::abs(gi) * (std::abs(xi) + std::abs(mu)) * is;
      }
      sum_db[size_t(k)] += s1;
      sum_dw[size_t(k)] += s2;
      abs_db[size_t(k)] += a1;
      abs_dw[size_t(k)] += a2;
    }
  }
  const double f = bound_factor<T>(shape.m()) + unit_roundoff<T>() * double(groups);
  for (int64_t k = 0; k < c; ++k) {
    context() = "ghost, all " + std::to_string(groups) + " groups (virtual batch " +
                std::to_string(vbs) + "), channel " + std::to_string(k) + " of " + describe(shape);
    const double tiny = double(shape.m()) * double(std::numeric_limits<T>::denorm_min());
    expect_close("dbias", k, db[size_t(k)], double(sum_db[size_t(k)]),
                 f * abs_db[size_t(k)] + tiny);
    expect_close("dweight", k, dw[size_t(k)], double(sum_dw[size_t(k)]),
                 f * abs_dw[size_t(k)] + tiny);
    if (cm.track) {
      expect_close("running_mean", k, rm[size_t(k)], want_rm[size_t(k)], err_rm[size_t(k)]);
      expect_close("running_var", k, rv[size_t(k)], want_rv[size_t(k)], err_rv[size_t(k)]);
    }
  }
}

template <class T>
void run(FuzzedDataProvider& in) {
  const uint8_t op = in.ConsumeIntegral<uint8_t>() % 3;
  const Shape shape = ordinary_shape(in);
  if (shape.numel() > kMaxNumel || shape.m() < 2) return;
  const Common cm = decode_common(in);
  SplitMix rng{in.ConsumeIntegral<uint64_t>()};
  if (op == 0) fused<T>(in, shape, cm, rng);
  if (op == 1) renorm<T>(in, shape, cm, rng);
  if (op == 2) ghost<T>(in, shape, cm, rng);
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
