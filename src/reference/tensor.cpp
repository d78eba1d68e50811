// Whole-tensor wrappers over the per-channel reference: channels are
// independent, so each is gathered, computed on, and scattered back.
#include <bnorm/reference.hpp>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace bnorm::reference {
namespace {

int64_t index_of(const Shape& shape, int64_t k, int64_t r) {
  // r runs over (sample i, position j) in order: r = i * s + j.
  const int64_t i = r / shape.s, j = r % shape.s;
  return shape.layout == Layout::NCHW ? (i * shape.c + k) * shape.s + j
                                      : (i * shape.s + j) * shape.c + k;
}

void check_size(std::span<const double> t, int64_t expected, const char* what) {
  if (int64_t(t.size()) != expected)
    throw std::invalid_argument(std::string("reference: ") + what + " has " +
                                std::to_string(t.size()) + " values, expected " +
                                std::to_string(expected));
}

double param(std::span<const double> p, int64_t k, double fallback) {
  return p.empty() ? fallback : p[size_t(k)];
}

// L = sum_i dy_i * y_i over one channel, the training forward.
double channel_loss(std::span<const double> x, std::span<const double> dy, double gamma,
                    double beta, double eps) {
  const StagedForward f = staged_forward(x, gamma, beta, eps);
  double loss = 0;
  for (size_t i = 0; i < x.size(); ++i) loss += dy[i] * f.y[i];
  return loss;
}

}  // namespace

std::vector<double> gather_channel(const Shape& shape, std::span<const double> t, int64_t k) {
  check_size(t, shape.numel(), "tensor");
  std::vector<double> v(size_t(shape.m()));
  for (int64_t r = 0; r < shape.m(); ++r) v[size_t(r)] = t[size_t(index_of(shape, k, r))];
  return v;
}

void scatter_channel(const Shape& shape, std::span<const double> values, int64_t k,
                     std::span<double> t) {
  for (int64_t r = 0; r < shape.m(); ++r) t[size_t(index_of(shape, k, r))] = values[size_t(r)];
}

Forward forward_training(const Shape& shape, std::span<const double> x,
                         std::span<const double> weight, std::span<const double> bias, double eps) {
  check_size(x, shape.numel(), "x");
  Forward out;
  out.y.resize(x.size());
  for (int64_t k = 0; k < shape.c; ++k) {
    const auto f = staged_forward(gather_channel(shape, x, k), param(weight, k, 1.0),
                                  param(bias, k, 0.0), eps);
    out.mean.push_back(f.mu);
    out.var.push_back(f.var);
    out.invstd.push_back(f.ivar);
    scatter_channel(shape, f.y, k, out.y);
  }
  return out;
}

std::vector<double> forward_inference(const Shape& shape, std::span<const double> x,
                                      std::span<const double> weight, std::span<const double> bias,
                                      std::span<const double> running_mean,
                                      std::span<const double> running_var, double eps) {
  check_size(x, shape.numel(), "x");
  std::vector<double> y(x.size());
  for (int64_t k = 0; k < shape.c; ++k) {
    std::vector<double> v = gather_channel(shape, x, k);
    // y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta
    const double invstd = 1.0 / std::sqrt(running_var[size_t(k)] + eps);
    for (double& e : v)
      e = param(weight, k, 1.0) * (e - running_mean[size_t(k)]) * invstd + param(bias, k, 0.0);
    scatter_channel(shape, v, k, y);
  }
  return y;
}

const char* to_string(Method method) {
  switch (method) {
    case Method::staged:
      return "staged";
    case Method::closed_form:
      return "closed_form";
    case Method::compact:
      return "compact";
    case Method::frozen_moments:
      return "frozen_moments";
  }
  return "?";
}

Gradients backward(Method method, const Shape& shape, std::span<const double> dy,
                   std::span<const double> x, std::span<const double> weight, double eps) {
  check_size(x, shape.numel(), "x");
  check_size(dy, shape.numel(), "dy");
  Gradients g;
  g.dx.resize(x.size());
  for (int64_t k = 0; k < shape.c; ++k) {
    const std::vector<double> xc = gather_channel(shape, x, k);
    const std::vector<double> dyc = gather_channel(shape, dy, k);
    const double gamma = param(weight, k, 1.0);
    std::vector<double> dxc;
    double dgamma = 0, dbeta = 0;
    if (method == Method::staged) {
      const StagedBackward b = staged_backward(staged_forward(xc, gamma, 0.0, eps), dyc);
      dxc = b.dx;
      dgamma = b.dgamma;
      dbeta = b.dbeta;
    } else {
      const ClosedForm cf = closed_form(xc, dyc, gamma, eps);
      dgamma = cf.dgamma;
      dbeta = cf.dbeta;
      if (method == Method::closed_form) {
        dxc = cf.dx;
      } else if (method == Method::compact) {
        dxc = cf.dx_compact;
      } else {
        // frozen moments: mu and var are constants, so x -> y is affine per
        // value: dx_i = gamma * invstd * dy_i.
        const StagedForward f = staged_forward(xc, gamma, 0.0, eps);
        dxc.resize(xc.size());
        for (size_t i = 0; i < xc.size(); ++i) dxc[i] = gamma * f.ivar * dyc[i];
      }
    }
    scatter_channel(shape, dxc, k, g.dx);
    g.dweight.push_back(dgamma);
    g.dbias.push_back(dbeta);
  }
  return g;
}

Gradients finite_differences(const Shape& shape, std::span<const double> dy,
                             std::span<const double> x, std::span<const double> weight,
                             std::span<const double> bias, double eps, double h) {
  check_size(x, shape.numel(), "x");
  check_size(dy, shape.numel(), "dy");
  Gradients g;
  g.dx.resize(x.size());
  for (int64_t k = 0; k < shape.c; ++k) {
    std::vector<double> xc = gather_channel(shape, x, k);
    const std::vector<double> dyc = gather_channel(shape, dy, k);
    const double gamma = param(weight, k, 1.0), beta = param(bias, k, 0.0);
    std::vector<double> dxc(xc.size());
    for (size_t i = 0; i < xc.size(); ++i) {
      const double saved = xc[i];
      const double step = h * std::max(1.0, std::abs(saved));
      xc[i] = saved + step;
      const double up = channel_loss(xc, dyc, gamma, beta, eps);
      xc[i] = saved - step;
      const double down = channel_loss(xc, dyc, gamma, beta, eps);
      xc[i] = saved;
      dxc[i] = (up - down) / (2 * step);
    }
    scatter_channel(shape, dxc, k, g.dx);
    const double sg = h * std::max(1.0, std::abs(gamma)), sb = h * std::max(1.0, std::abs(beta));
    g.dweight.push_back((channel_loss(xc, dyc, gamma + sg, beta, eps) -
                         channel_loss(xc, dyc, gamma - sg, beta, eps)) /
                        (2 * sg));
    g.dbias.push_back((channel_loss(xc, dyc, gamma, beta + sb, eps) -
                       channel_loss(xc, dyc, gamma, beta - sb, eps)) /
                      (2 * sb));
  }
  return g;
}

double max_scaled_error(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size()) throw std::invalid_argument("max_scaled_error: sizes differ");
  double diff = 0, size = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return std::numeric_limits<double>::quiet_NaN();
    if (std::isnan(a[i])) continue;
    diff = std::max(diff, std::abs(a[i] - b[i]));
    size = std::max(size, std::abs(b[i]));
  }
  return diff == 0 ? 0 : diff / size;
}

double dx_error(const Shape& shape, std::span<const double> got, std::span<const double> want,
                std::span<const double> dy, std::span<const double> weight,
                std::span<const double> invstd) {
  check_size(got, shape.numel(), "got");
  check_size(want, shape.numel(), "want");
  double diff = 0, size = 0;
  for (int64_t k = 0; k < shape.c; ++k) {
    const auto g = gather_channel(shape, got, k), w = gather_channel(shape, want, k),
               d = gather_channel(shape, dy, k);
    const double term = std::abs(param(weight, k, 1.0) * invstd[size_t(k)]);
    for (size_t i = 0; i < g.size(); ++i) {
      if (std::isnan(g[i]) != std::isnan(w[i])) return std::numeric_limits<double>::quiet_NaN();
      diff = std::max(diff, std::abs(g[i] - w[i]));
      size = std::max(size, term * std::abs(d[i]));
    }
  }
  return diff == 0 ? 0 : diff / size;
}

}  // namespace bnorm::reference
