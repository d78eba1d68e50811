// Batch Renormalization (Ioffe, 2017, arXiv:1702.03275), Algorithm 1 and its
// backward, one channel at a time in double precision, written to be read
// beside the paper rather than derived from the fast path's shortcut.
#include <algorithm>
#include <bnorm/reference.hpp>
#include <cmath>
#include <stdexcept>
#include <string>

namespace bnorm::reference {
namespace {

double param(std::span<const double> p, int64_t k, double fallback) {
  return p.empty() ? fallback : p[size_t(k)];
}

double clip(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

// One channel's forward with r and d given: x_hat_i = (x_i - mu_B) / sigma_B * r + d.
struct ChannelForward {
  double mu_b = 0, var_b = 0, sigma_b = 0;
  std::vector<double> y;
};

ChannelForward channel_forward(std::span<const double> x, double gamma, double beta, double r,
                               double d, double eps) {
  ChannelForward f;
  const double m = double(x.size());
  double sum = 0;
  for (double v : x) sum += v;
  f.mu_b = sum / m;  // mu_B = (1/m) sum x_i
  double sq = 0;
  for (double v : x) sq += (v - f.mu_b) * (v - f.mu_b);
  f.var_b = sq / m;
  f.sigma_b = std::sqrt(f.var_b + eps);  // sigma_B = sqrt((1/m) sum (x_i - mu_B)^2 + eps)
  for (double v : x) f.y.push_back(gamma * ((v - f.mu_b) / f.sigma_b * r + d) + beta);
  return f;
}

double channel_loss(std::span<const double> x, std::span<const double> dy, double gamma,
                    double beta, double r, double d, double eps) {
  const ChannelForward f = channel_forward(x, gamma, beta, r, d, eps);
  double loss = 0;
  for (size_t i = 0; i < x.size(); ++i) loss += dy[i] * f.y[i];
  return loss;
}

void check_channels(std::span<const double> v, int64_t c, const char* what) {
  if (int64_t(v.size()) != c)
    throw std::invalid_argument(std::string("reference: ") + what + " has " +
                                std::to_string(v.size()) + " values, expected " +
                                std::to_string(c));
}

}  // namespace

RenormForward batch_renorm_forward_training(const Shape& shape, std::span<const double> x,
                                            std::span<const double> weight,
                                            std::span<const double> bias,
                                            std::span<const double> running_mean,
                                            std::span<const double> running_var, double rmax,
                                            double dmax, double momentum, double eps,
                                            bool unbiased) {
  check_channels(running_mean, shape.c, "running_mean");
  check_channels(running_var, shape.c, "running_var");
  RenormForward out;
  out.y.resize(size_t(shape.numel()));
  const double m = double(shape.m());
  for (int64_t k = 0; k < shape.c; ++k) {
    const std::vector<double> xc = gather_channel(shape, x, k);
    const double mu = running_mean[size_t(k)];
    const double sigma = std::sqrt(running_var[size_t(k)] + eps);  // moving std
    // mu_B and sigma_B first (r and d need them), then the normalized values.
    const ChannelForward stats = channel_forward(xc, 1.0, 0.0, 1.0, 0.0, eps);
    const double r = clip(stats.sigma_b / sigma, 1.0 / rmax, rmax);
    const double d = clip((stats.mu_b - mu) / sigma, -dmax, dmax);
    const ChannelForward f =
        channel_forward(xc, param(weight, k, 1.0), param(bias, k, 0.0), r, d, eps);
    scatter_channel(shape, f.y, k, out.y);
    const double var_b = f.var_b;  // the biased batch variance
    out.mean.push_back(f.mu_b);
    out.var.push_back(var_b);
    out.invstd.push_back(1.0 / f.sigma_b);
    out.r.push_back(r);
    out.d.push_back(d);
    const double v = unbiased ? var_b * m / (m - 1) : var_b;
    out.running_mean.push_back(mu + momentum * (f.mu_b - mu));
    out.running_var.push_back(running_var[size_t(k)] + momentum * (v - running_var[size_t(k)]));
  }
  return out;
}

Gradients batch_renorm_backward(const Shape& shape, std::span<const double> dy,
                                std::span<const double> x, std::span<const double> weight,
                                std::span<const double> r, std::span<const double> d, double eps) {
  check_channels(r, shape.c, "r");
  check_channels(d, shape.c, "d");
  Gradients g;
  g.dx.resize(size_t(shape.numel()));
  for (int64_t k = 0; k < shape.c; ++k) {
    const std::vector<double> xc = gather_channel(shape, x, k);
    const std::vector<double> dyc = gather_channel(shape, dy, k);
    const double gamma = param(weight, k, 1.0), rk = r[size_t(k)], dk = d[size_t(k)];
    const ChannelForward f = channel_forward(xc, gamma, 0.0, rk, dk, eps);
    const double m = double(xc.size()), mu_b = f.mu_b, sigma_b = f.sigma_b;
    double dsigma_b = 0, dmu_b = 0, dgamma = 0, dbeta = 0;
    for (size_t i = 0; i < xc.size(); ++i) {
      const double dxhat = dyc[i] * gamma;
      dsigma_b += dxhat * (xc[i] - mu_b) * (-rk / (sigma_b * sigma_b));
      dmu_b += dxhat * (-rk / sigma_b);
      dgamma += dyc[i] * ((xc[i] - mu_b) / sigma_b * rk + dk);
      dbeta += dyc[i];
    }
    std::vector<double> dxc(xc.size());
    for (size_t i = 0; i < xc.size(); ++i)
      dxc[i] =
          dyc[i] * gamma * rk / sigma_b + dsigma_b * (xc[i] - mu_b) / (m * sigma_b) + dmu_b / m;
    scatter_channel(shape, dxc, k, g.dx);
    g.dweight.push_back(dgamma);
    g.dbias.push_back(dbeta);
  }
  return g;
}

Gradients batch_renorm_finite_differences(const Shape& shape, std::span<const double> dy,
                                          std::span<const double> x, std::span<const double> weight,
                                          std::span<const double> bias, std::span<const double> r,
                                          std::span<const double> d, double eps, double h) {
  check_channels(r, shape.c, "r");
  check_channels(d, shape.c, "d");
  Gradients g;
  g.dx.resize(size_t(shape.numel()));
  for (int64_t k = 0; k < shape.c; ++k) {
    std::vector<double> xc = gather_channel(shape, x, k);
    const std::vector<double> dyc = gather_channel(shape, dy, k);
    const double gamma = param(weight, k, 1.0), beta = param(bias, k, 0.0);
    const double rk = r[size_t(k)], dk = d[size_t(k)];
    const auto loss = [&](double gm, double bt) {
      return channel_loss(xc, dyc, gm, bt, rk, dk, eps);
    };
    std::vector<double> dxc(xc.size());
    for (size_t i = 0; i < xc.size(); ++i) {
      const double saved = xc[i];
      const double step = h * std::max(1.0, std::abs(saved));
      xc[i] = saved + step;
      const double up = loss(gamma, beta);
      xc[i] = saved - step;
      const double down = loss(gamma, beta);
      xc[i] = saved;
      dxc[i] = (up - down) / (2 * step);
    }
    scatter_channel(shape, dxc, k, g.dx);
    const double sg = h * std::max(1.0, std::abs(gamma)), sb = h * std::max(1.0, std::abs(beta));
    g.dweight.push_back((loss(gamma + sg, beta) - loss(gamma - sg, beta)) / (2 * sg));
    g.dbias.push_back((loss(gamma, beta + sb) - loss(gamma, beta - sb)) / (2 * sb));
  }
  return g;
}

}  // namespace bnorm::reference
