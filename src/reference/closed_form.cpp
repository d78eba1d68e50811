// The backward pass as the paper writes it (Ioffe and Szegedy 2015, Sec. 3),
// with the biased 1/m variance of Algorithm 1, and its compact form.
#include <bnorm/reference.hpp>
#include <cmath>
#include <stdexcept>

namespace bnorm::reference {

ClosedForm closed_form(std::span<const double> x, std::span<const double> dy, double gamma,
                       double eps) {
  const size_t m = x.size();
  if (m == 0 || dy.size() != m) throw std::invalid_argument("closed_form: bad sizes");
  const double md = double(m);

  double mu = 0;
  for (double v : x) mu += v;
  mu /= md;
  double var = 0;
  for (double v : x) var += (v - mu) * (v - mu);
  var /= md;
  const double invstd = 1.0 / std::sqrt(var + eps);

  ClosedForm g;
  // dL/dxhat_i = dL/dy_i * gamma
  g.dxhat.resize(m);
  for (size_t i = 0; i < m; ++i) g.dxhat[i] = dy[i] * gamma;

  // dL/dvar = sum_i dL/dxhat_i * (x_i - mu) * (-1/2) * (var + eps)^(-3/2)
  for (size_t i = 0; i < m; ++i) g.dvar += g.dxhat[i] * (x[i] - mu);
  g.dvar *= -0.5 * std::pow(var + eps, -1.5);

  // dL/dmu = (sum_i dL/dxhat_i * -1/sqrt(var + eps)) + dL/dvar * (sum_i -2 (x_i - mu)) / m
  // The second sum is zero in exact arithmetic; it is kept as the paper has it.
  double sum_dxhat = 0, sum_centered = 0;
  for (size_t i = 0; i < m; ++i) {
    sum_dxhat += g.dxhat[i];
    sum_centered += -2.0 * (x[i] - mu);
  }
  g.dmu = -sum_dxhat * invstd + g.dvar * sum_centered / md;

  // dL/dx_i = dL/dxhat_i / sqrt(var + eps) + dL/dvar * 2 (x_i - mu) / m + dL/dmu / m
  g.dx.resize(m);
  for (size_t i = 0; i < m; ++i)
    g.dx[i] = g.dxhat[i] * invstd + g.dvar * 2.0 * (x[i] - mu) / md + g.dmu / md;

  // dL/dgamma = sum_i dy_i xhat_i;  dL/dbeta = sum_i dy_i
  double mean_dy = 0, mean_dy_xhat = 0;
  for (size_t i = 0; i < m; ++i) {
    const double xhat = (x[i] - mu) * invstd;
    g.dgamma += dy[i] * xhat;
    g.dbeta += dy[i];
  }
  mean_dy = g.dbeta / md;
  mean_dy_xhat = g.dgamma / md;

  // Compact: dx_i = gamma * invstd * (dy_i - mean(dy) - xhat_i * mean(dy * xhat))
  g.dx_compact.resize(m);
  for (size_t i = 0; i < m; ++i) {
    const double xhat = (x[i] - mu) * invstd;
    g.dx_compact[i] = gamma * invstd * (dy[i] - mean_dy - xhat * mean_dy_xhat);
  }
  return g;
}

}  // namespace bnorm::reference
