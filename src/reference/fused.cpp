// The fused layer's reference: the unfused composition, in double.
#include <bnorm/reference_fused.hpp>
#include <cmath>

namespace bnorm::reference {

double activation(const Epilogue& e, double z) {
  switch (e.act) {
    case Activation::relu:
      return z > 0 ? z : 0.0;
    case Activation::leaky_relu:
      return z > 0 ? z : e.negative_slope * z;
    default:
      return z;
  }
}

double activation_derivative(const Epilogue& e, double z) {
  switch (e.act) {
    case Activation::relu:
      return z > 0 ? 1.0 : 0.0;
    case Activation::leaky_relu:
      return z > 0 ? 1.0 : e.negative_slope;
    default:
      return 1.0;
  }
}

std::vector<double> effective_weight(std::span<const double> weight, int64_t c, const Epilogue& e) {
  std::vector<double> g(size_t(c), 1.0);
  for (int64_t k = 0; k < c; ++k) {
    const double w = weight.empty() ? 1.0 : weight[size_t(k)];
    g[size_t(k)] = e.abs_weight ? std::abs(w) + e.weight_eps : w;
  }
  return g;
}

FusedForward fused_forward_training(const Shape& shape, std::span<const double> x,
                                    std::span<const double> residual,
                                    std::span<const double> weight, std::span<const double> bias,
                                    double eps, const Epilogue& e) {
  const auto gamma = effective_weight(weight, shape.c, e);
  const Forward bn = forward_training(shape, x, gamma, bias, eps);
  FusedForward out;
  out.z = bn.y;
  if (!residual.empty())
    for (size_t i = 0; i < out.z.size(); ++i) out.z[i] += residual[i];
  out.y.resize(out.z.size());
  for (size_t i = 0; i < out.z.size(); ++i) out.y[i] = activation(e, out.z[i]);
  out.mean = bn.mean;
  out.var = bn.var;
  out.invstd = bn.invstd;
  return out;
}

std::vector<double> fused_forward_inference(const Shape& shape, std::span<const double> x,
                                            std::span<const double> residual,
                                            std::span<const double> weight,
                                            std::span<const double> bias,
                                            std::span<const double> running_mean,
                                            std::span<const double> running_var, double eps,
                                            const Epilogue& e) {
  const auto gamma = effective_weight(weight, shape.c, e);
  std::vector<double> y = forward_inference(shape, x, gamma, bias, running_mean, running_var, eps);
  for (size_t i = 0; i < y.size(); ++i)
    y[i] = activation(e, y[i] + (residual.empty() ? 0.0 : residual[i]));
  return y;
}

FusedGradients fused_backward(const Shape& shape, std::span<const double> dy,
                              std::span<const double> x, std::span<const double> residual,
                              std::span<const double> weight, std::span<const double> bias,
                              double eps, const Epilogue& e, std::span<const double> mask_y) {
  const FusedForward f = fused_forward_training(shape, x, residual, weight, bias, eps, e);
  FusedGradients g;
  // act: dz = dy * act'(z); add: dresidual = dz and dbn = dz.
  g.dresidual.resize(dy.size());
  for (size_t i = 0; i < dy.size(); ++i) {
    const double z = mask_y.empty() ? f.z[i] : mask_y[i];
    g.dresidual[i] = dy[i] * activation_derivative(e, z);
  }
  const auto gamma = effective_weight(weight, shape.c, e);
  Gradients bn = backward(Method::compact, shape, g.dresidual, x, gamma, eps);
  g.dx = std::move(bn.dx);
  g.dbias = std::move(bn.dbias);
  g.dweight = std::move(bn.dweight);
  // gamma_eff = |w| + weight_eps: chain rule through |w|.
  if (e.abs_weight && !weight.empty())
    for (size_t k = 0; k < g.dweight.size(); ++k)
      if (std::signbit(weight[k])) g.dweight[k] = -g.dweight[k];
  return g;
}

FusedGradients fused_finite_differences(const Shape& shape, std::span<const double> dy,
                                        std::span<const double> x, std::span<const double> residual,
                                        std::span<const double> weight,
                                        std::span<const double> bias, double eps, const Epilogue& e,
                                        double h) {
  std::vector<double> xv(x.begin(), x.end()), rv(residual.begin(), residual.end()),
      wv(weight.begin(), weight.end()), bv(bias.begin(), bias.end());
  const auto loss = [&] {
    const FusedForward f = fused_forward_training(shape, xv, rv, wv, bv, eps, e);
    double l = 0;
    for (size_t i = 0; i < dy.size(); ++i) l += dy[i] * f.y[i];
    return l;
  };
  const auto diff = [&](std::vector<double>& v) {
    std::vector<double> d(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      const double keep = v[i], step = h * std::max(1.0, std::abs(keep));
      v[i] = keep + step;
      const double up = loss();
      v[i] = keep - step;
      const double down = loss();
      v[i] = keep;
      d[i] = (up - down) / (2 * step);
    }
    return d;
  };
  FusedGradients g;
  g.dx = diff(xv);
  g.dresidual = diff(rv);
  g.dweight = diff(wv);
  g.dbias = diff(bv);
  return g;
}

}  // namespace bnorm::reference
