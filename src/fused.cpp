// The fused public functions (bnorm/fused.hpp): validate everything, compute
// the per-channel coefficients in double, then run the fused kernels.
#include <bnorm/fused.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/kernels.hpp"
#include "validate.hpp"

namespace bnorm {
namespace {

// gamma_k as the layer uses it: weight (1 when null), or |weight| +
// weight_eps with abs_weight.
template <class P>
double gamma_of(const P* weight, int64_t k, const Epilogue& e) {
  const double w = weight ? double(weight[k]) : 1.0;
  return e.abs_weight ? std::abs(w) + e.weight_eps : w;
}

// d gamma_eff / d weight: sign(weight) with abs_weight (+-0 counts as +-1).
template <class P>
double gamma_sign(const P* weight, int64_t k, const Epilogue& e) {
  if (!e.abs_weight || !weight) return 1.0;
  return std::signbit(double(weight[k])) ? -1.0 : 1.0;
}

template <class T>
using Vec = std::vector<param_t<T>>;

// The kernels' arguments common to every pass.
template <class T>
cpu::FusedArgs<T> fused_args(const Shape& shape, const Epilogue& e) {
  cpu::FusedArgs<T> a;
  a.shape = shape;
  a.act = e.act;
  a.slope = param_t<T>(e.negative_slope);
  return a;
}

// The per-channel sums a backward's reduction fills (zeroed), and its
// arguments for dy and y: the two backward paths differ only in g and p0.
struct BackwardSums {
  std::vector<double> dz, dz_g;
  explicit BackwardSums(int64_t c) : dz(size_t(c), 0.0), dz_g(size_t(c), 0.0) {}
};

template <class T>
cpu::FusedArgs<T> backward_args(const Shape& shape, const Epilogue& e, const T* dy, const T* y,
                                BackwardSums& sums) {
  cpu::FusedArgs<T> a = fused_args<T>(shape, e);
  a.dy = dy;
  a.y_in = y;
  a.sum_dz = sums.dz.data();
  a.sum_dz_g = sums.dz_g.data();
  return a;
}

// The backward once the kernels summed, per channel, sum_dz = sum dz and
// sum_dz_g = sum dz (g - p0), where g - p0 = x_hat / inv_unit_k (x - mean
// with inv_unit = invstd, or act^-1(y) - beta with inv_unit = 1 / gamma):
// dweight and dbias, then dx = ca dz + cb (g - p0) + cc and dresidual = dz
// in one more pass over the elements (a.p[0] = p0 already set).
template <class T, class InvUnit>
void finish_backward(cpu::FusedArgs<T>& a, const param_t<T>* weight, const param_t<T>* save_invstd,
                     const Epilogue& e, InvUnit&& inv_unit, T* dx, param_t<T>* dweight,
                     param_t<T>* dbias, T* dresidual) {
  using P = param_t<T>;
  const int64_t c = a.shape.c;
  const double m = double(a.shape.m());
  Vec<T> ca(static_cast<size_t>(c)), cb(static_cast<size_t>(c)), cc(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k) {
    const double u = inv_unit(k), sum_dz = a.sum_dz[k];
    const double sum_dz_xhat = a.sum_dz_g[k] * u;
    if (dweight) dweight[k] = P(gamma_sign(weight, k, e) * sum_dz_xhat);
    if (dbias) dbias[k] = P(sum_dz);
    const double g_invstd = gamma_of(weight, k, e) * double(save_invstd[k]);
    ca[size_t(k)] = P(g_invstd);
    cb[size_t(k)] = P(-g_invstd * u * sum_dz_xhat / m);
    cc[size_t(k)] = P(-g_invstd * sum_dz / m);
  }
  if (!dx && !dresidual) return;
  a.dx = dx;
  a.dresidual = dresidual;
  a.p[1] = ca.data();
  a.p[2] = cb.data();
  a.p[3] = cc.data();
  cpu::fused_dx_fast(a);
}

}  // namespace

const char* activation_name(Activation act) {
  switch (act) {
    case Activation::identity:
      return "identity";
    case Activation::relu:
      return "relu";
    case Activation::leaky_relu:
      return "leaky_relu";
  }
  return "invalid";
}

Activation activation_from_name(std::string_view name) {
  for (Activation act : {Activation::identity, Activation::relu, Activation::leaky_relu})
    if (name == activation_name(act)) return act;
  throw std::invalid_argument("bnorm: act must be 'identity', 'relu' or 'leaky_relu', got '" +
                              std::string(name) + "'");
}

void check_epilogue(const char* fn, const Epilogue& e, bool from_output, bool residual) {
  if (e.act != Activation::identity && e.act != Activation::relu && e.act != Activation::leaky_relu)
    detail::fail(fn, "epilogue.act is not identity, relu or leaky_relu (value " +
                         std::to_string(static_cast<int>(e.act)) + ")");
  if (e.act == Activation::leaky_relu &&
      !(std::isfinite(e.negative_slope) && e.negative_slope >= 0))
    detail::fail(fn,
                 "epilogue.negative_slope must be finite and >= 0 (the mask is read off y), got " +
                     std::to_string(e.negative_slope));
  if (e.abs_weight && !(std::isfinite(e.weight_eps) && e.weight_eps > 0))
    detail::fail(fn, "epilogue.weight_eps must be finite and > 0 with abs_weight, got " +
                         std::to_string(e.weight_eps));
  if (!from_output) return;
  // x_hat = (act^-1(y) - beta) / gamma needs act^-1, and y = act(bn(x) + r)
  // does not tell r apart from bn(x).
  if (e.act == Activation::relu)
    detail::fail(fn, "epilogue.act is relu, which is not invertible (use identity or leaky_relu)");
  if (e.act == Activation::leaky_relu && !(e.negative_slope > 0))
    detail::fail(fn, "epilogue.negative_slope must be > 0 to invert leaky_relu, got " +
                         std::to_string(e.negative_slope));
  if (residual)
    detail::fail(fn,
                 "the backward from the output cannot take a residual (y does not tell it "
                 "apart from bn(x))");
}

template <class T>
void fused_forward_training(const Shape& shape, const T* x, const T* residual,
                            const param_t<T>* weight, const param_t<T>* bias, T* y,
                            param_t<T>* save_mean, param_t<T>* save_invstd,
                            param_t<T>* running_mean, param_t<T>* running_var,
                            const Options& options, const Epilogue& epilogue) {
  using P = param_t<T>;
  constexpr const char* fn = "fused_forward_training";
  const double factor = detail::check_training(fn, shape, x, y, running_mean, running_var, options);
  check_epilogue(fn, epilogue);
  const int64_t c = shape.c;
  std::vector<double> mean(static_cast<size_t>(c)), var(static_cast<size_t>(c));
  cpu::moments_fast(shape, x, mean.data(), var.data());
  Vec<T> gamma(static_cast<size_t>(c)), mu(static_cast<size_t>(c)), scale(static_cast<size_t>(c)),
      shift(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k) gamma[size_t(k)] = P(gamma_of(weight, k, epilogue));
  const auto out = cpu::forward_outputs<P>(gamma.data(), bias, save_mean, save_invstd, running_mean,
                                           running_var, options, factor);
  for (int64_t k = 0; k < c; ++k)
    cpu::finish_forward_channel(out, double(shape.m()), k, mean[size_t(k)], var[size_t(k)],
                                mu[size_t(k)], scale[size_t(k)], shift[size_t(k)]);
  cpu::FusedArgs<T> a = fused_args<T>(shape, epilogue);
  a.x = x;
  a.residual = residual;
  a.y = y;
  a.p[0] = mu.data();
  a.p[1] = scale.data();
  a.p[2] = shift.data();
  cpu::fused_normalize_fast(a);
}

template <class T>
void fused_forward_inference(const Shape& shape, const T* x, const T* residual,
                             const param_t<T>* weight, const param_t<T>* bias,
                             const param_t<T>* running_mean, const param_t<T>* running_var, T* y,
                             double eps, const Epilogue& epilogue) {
  using P = param_t<T>;
  constexpr const char* fn = "fused_forward_inference";
  detail::check_inference(fn, shape, eps, x, running_mean, running_var, y);
  check_epilogue(fn, epilogue);
  const int64_t c = shape.c;
  Vec<T> scale(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k) {
    scale[size_t(k)] =
        P(gamma_of(weight, k, epilogue) / detail::stddev_of(double(running_var[k]), eps));
    shift[size_t(k)] = bias ? bias[k] : P(0);
  }
  cpu::FusedArgs<T> a = fused_args<T>(shape, epilogue);
  a.x = x;
  a.residual = residual;
  a.y = y;
  a.p[0] = running_mean;
  a.p[1] = scale.data();
  a.p[2] = shift.data();
  cpu::fused_normalize_fast(a);
}

template <class T>
void fused_backward(const Shape& shape, const T* dy, const T* y, const T* x,
                    const param_t<T>* weight, const param_t<T>* save_mean,
                    const param_t<T>* save_invstd, T* dx, param_t<T>* dweight, param_t<T>* dbias,
                    T* dresidual, const Epilogue& epilogue) {
  constexpr const char* fn = "fused_backward";
  detail::check_shape(fn, shape);
  detail::check_not_null(fn, dy, "dy");
  check_epilogue(fn, epilogue);
  if (epilogue.act != Activation::identity) detail::check_not_null(fn, y, "y (for the mask)");
  detail::check_not_null(fn, x, "x");
  detail::check_not_null(fn, save_mean, "save_mean");
  detail::check_not_null(fn, save_invstd, "save_invstd");
  if (!dx && !dweight && !dbias && !dresidual) return;
  BackwardSums sums(shape.c);  // sum dz, sum dz (x - mean)
  cpu::FusedArgs<T> a = backward_args(shape, epilogue, dy, y, sums);
  a.x = x;
  a.p[0] = save_mean;
  // dresidual alone needs no sums (dz is elementwise). With the sums, the
  // reduction writes dresidual = dz on its way and the dx pass reads it
  // back in place of dy and y: one tensor less to read (8 to 7 times the
  // tensor's bytes), where dz is exact in T (not leaky_relu's dy * slope
  // in a 16-bit type).
  const bool reduce = dx || dweight || dbias;
  if (reduce && dresidual &&
      (epilogue.act != Activation::leaky_relu || sizeof(T) == sizeof(param_t<T>)))
    a.dz_out = dresidual;
  if (reduce) cpu::fused_reduce_fast(a);
  if (a.dz_out) {
    a.dz_in = a.dz_out;
    a.dz_out = nullptr;
    dresidual = nullptr;
  }
  finish_backward(
      a, weight, save_invstd, epilogue, [&](int64_t k) { return double(save_invstd[k]); }, dx,
      dweight, dbias, dresidual);
}

template <class T>
void fused_backward_from_output(const Shape& shape, const T* dy, const T* y,
                                const param_t<T>* weight, const param_t<T>* bias,
                                const param_t<T>* save_invstd, T* dx, param_t<T>* dweight,
                                param_t<T>* dbias, const Epilogue& epilogue) {
  constexpr const char* fn = "fused_backward_from_output";
  detail::check_shape(fn, shape);
  detail::check_not_null(fn, dy, "dy");
  detail::check_not_null(fn, y, "y");
  detail::check_not_null(fn, save_invstd, "save_invstd");
  check_epilogue(fn, epilogue, true);
  const int64_t c = shape.c;
  if (weight && !epilogue.abs_weight)
    for (int64_t k = 0; k < c; ++k)
      if (!(double(weight[k]) != 0 && std::isfinite(double(weight[k]))))
        detail::fail(fn, "weight[" + std::to_string(k) + "] is " +
                             std::to_string(double(weight[k])) +
                             ": x_hat = (act^-1(y) - beta) / gamma needs a finite non-zero gamma "
                             "(or epilogue.abs_weight)");
  if (!dx && !dweight && !dbias) return;
  BackwardSums sums(c);  // sum dz, sum dz (act^-1(y) - beta)
  cpu::FusedArgs<T> a = backward_args(shape, epilogue, dy, y, sums);
  a.from_output = true;
  a.p[0] = bias;  // act^-1(y) - beta = gamma * x_hat
  cpu::fused_reduce_fast(a);
  finish_backward(
      a, weight, save_invstd, epilogue,
      [&](int64_t k) { return 1.0 / gamma_of(weight, k, epilogue); }, dx, dweight, dbias,
      static_cast<T*>(nullptr));
}

template <class T>
void fold_batch_norm(int64_t out_channels, int64_t fan_in, const T* weight, const T* bias,
                     const param_t<T>* bn_weight, const param_t<T>* bn_bias,
                     const param_t<T>* running_mean, const param_t<T>* running_var, double eps,
                     T* weight_out, T* bias_out) {
  constexpr const char* fn = "fold_batch_norm";
  if (out_channels < 1)
    detail::fail(fn, "out_channels must be >= 1, got " + std::to_string(out_channels));
  if (fan_in < 1) detail::fail(fn, "fan_in must be >= 1, got " + std::to_string(fan_in));
  int64_t total = 0;
  if (__builtin_mul_overflow(out_channels, fan_in, &total))
    detail::fail(fn, "out_channels * fan_in overflows int64");
  detail::check_eps(fn, eps);
  detail::check_not_null(fn, weight, "weight");
  detail::check_not_null(fn, running_mean, "running_mean");
  detail::check_not_null(fn, running_var, "running_var");
  detail::check_not_null(fn, weight_out, "weight_out");
  detail::check_not_null(fn, bias_out, "bias_out");
  for (int64_t k = 0; k < out_channels; ++k)
    if (!(double(running_var[k]) + eps > 0))
      detail::fail(fn, "running_var[" + std::to_string(k) + "] + eps must be > 0, got " +
                           std::to_string(double(running_var[k])));
  const auto as_double = [](auto v) {
    if constexpr (std::is_arithmetic_v<decltype(v)>) {
      return double(v);
    } else {
      return double(float(v));
    }
  };
  for (int64_t k = 0; k < out_channels; ++k) {
    const double gamma = bn_weight ? double(bn_weight[k]) : 1.0;
    const double beta = bn_bias ? double(bn_bias[k]) : 0.0;
    const double s = gamma / detail::stddev_of(double(running_var[k]), eps);
    const double b = bias ? as_double(bias[k]) : 0.0;
    for (int64_t j = 0; j < fan_in; ++j)
      weight_out[k * fan_in + j] = T(as_double(weight[k * fan_in + j]) * s);
    bias_out[k] = T((b - double(running_mean[k])) * s + beta);
  }
}

#define BNORM_INSTANTIATE(T, ...)                                                                  \
  template void fused_forward_training<T>(                                                         \
      const Shape&, const T*, const T*, const param_t<T>*, const param_t<T>*, T*, param_t<T>*,     \
      param_t<T>*, param_t<T>*, param_t<T>*, const Options&, const Epilogue&);                     \
  template void fused_forward_inference<T>(const Shape&, const T*, const T*, const param_t<T>*,    \
                                           const param_t<T>*, const param_t<T>*,                   \
                                           const param_t<T>*, T*, double, const Epilogue&);        \
  template void fused_backward<T>(const Shape&, const T*, const T*, const T*, const param_t<T>*,   \
                                  const param_t<T>*, const param_t<T>*, T*, param_t<T>*,           \
                                  param_t<T>*, T*, const Epilogue&);                               \
  template void fused_backward_from_output<T>(const Shape&, const T*, const T*, const param_t<T>*, \
                                              const param_t<T>*, const param_t<T>*, T*,            \
                                              param_t<T>*, param_t<T>*, const Epilogue&);          \
  template void fold_batch_norm<T>(int64_t, int64_t, const T*, const T*, const param_t<T>*,        \
                                   const param_t<T>*, const param_t<T>*, const param_t<T>*,        \
                                   double, T*, T*);
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm
