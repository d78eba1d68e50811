// The layer as a computational graph of primitive nodes (seed 004's figure):
//
//   x -> [mean] -> mu
//   x, mu -> [subtract] -> xmu -> [square] -> sq -> [variance] -> var
//   var -> [add eps] -> vareps -> [sqrt] -> sqrtvar -> [invert] -> ivar
//   xmu, ivar -> [multiply] -> xhat -> [scale by gamma] -> gammax
//   gammax -> [shift by beta] -> y
//
// The backward pass visits the nodes in reverse, each applying only its own
// local derivative to the gradient flowing into it. Where a value feeds two
// nodes (x feeds mean and subtract, xmu feeds square and multiply), the
// gradients from both uses add up: that sum is where the gradient through the
// batch mean and variance enters dx.
#include <bnorm/reference.hpp>
#include <cmath>
#include <stdexcept>

namespace bnorm::reference {

StagedForward staged_forward(std::span<const double> x, double gamma, double beta, double eps) {
  const size_t m = x.size();
  if (m == 0) throw std::invalid_argument("staged_forward: empty channel");
  StagedForward f;
  f.eps = eps;
  f.gamma = gamma;
  f.beta = beta;
  f.x.assign(x.begin(), x.end());

  // mean: mu = (1/m) sum_i x_i
  double sum = 0;
  for (double v : x) sum += v;
  f.mu = sum / double(m);

  // subtract: xmu_i = x_i - mu
  f.xmu.resize(m);
  for (size_t i = 0; i < m; ++i) f.xmu[i] = x[i] - f.mu;

  // square: sq_i = xmu_i^2
  f.sq.resize(m);
  for (size_t i = 0; i < m; ++i) f.sq[i] = f.xmu[i] * f.xmu[i];

  // variance: var = (1/m) sum_i sq_i   (biased, as in Algorithm 1)
  double sum_sq = 0;
  for (double v : f.sq) sum_sq += v;
  f.var = sum_sq / double(m);

  // add eps, sqrt, invert
  f.vareps = f.var + eps;
  f.sqrtvar = std::sqrt(f.vareps);
  f.ivar = 1.0 / f.sqrtvar;

  // multiply: xhat_i = xmu_i * ivar
  f.xhat.resize(m);
  for (size_t i = 0; i < m; ++i) f.xhat[i] = f.xmu[i] * f.ivar;

  // scale: gammax_i = gamma * xhat_i;  shift: y_i = gammax_i + beta
  f.gammax.resize(m);
  f.y.resize(m);
  for (size_t i = 0; i < m; ++i) {
    f.gammax[i] = gamma * f.xhat[i];
    f.y[i] = f.gammax[i] + beta;
  }
  return f;
}

StagedBackward staged_backward(const StagedForward& f, std::span<const double> dy) {
  const size_t m = f.x.size();
  if (dy.size() != m) throw std::invalid_argument("staged_backward: dy has the wrong size");
  const double md = double(m);
  StagedBackward b;
  b.dy.assign(dy.begin(), dy.end());

  // shift: y = gammax + beta.  d/dbeta = 1 (summed over the m uses of beta),
  // d/dgammax = 1.
  b.dgammax.resize(m);
  for (size_t i = 0; i < m; ++i) {
    b.dbeta += dy[i];
    b.dgammax[i] = dy[i];
  }

  // scale: gammax = gamma * xhat.  d/dgamma = xhat, d/dxhat = gamma.
  b.dxhat.resize(m);
  for (size_t i = 0; i < m; ++i) {
    b.dgamma += b.dgammax[i] * f.xhat[i];
    b.dxhat[i] = b.dgammax[i] * f.gamma;
  }

  // multiply: xhat = xmu * ivar.  d/dxmu = ivar, d/divar = xmu (ivar is
  // shared by all m values, so its gradient sums).
  b.dxmu_direct.resize(m);
  for (size_t i = 0; i < m; ++i) {
    b.dxmu_direct[i] = b.dxhat[i] * f.ivar;
    b.divar += b.dxhat[i] * f.xmu[i];
  }

  // invert: ivar = 1 / sqrtvar.  d/dsqrtvar = -1 / sqrtvar^2.
  b.dsqrtvar = -b.divar / (f.sqrtvar * f.sqrtvar);

  // sqrt: sqrtvar = sqrt(vareps).  d/dvareps = 1 / (2 sqrt(vareps)).
  b.dvareps = b.dsqrtvar * 0.5 / f.sqrtvar;

  // add eps: vareps = var + eps.  d/dvar = 1.
  b.dvar = b.dvareps;

  // variance: var = (1/m) sum sq_i.  d/dsq_i = 1/m.
  b.dsq.assign(m, b.dvar / md);

  // square: sq = xmu^2.  d/dxmu = 2 xmu.  Added to the direct path.
  b.dxmu_var.resize(m);
  b.dxmu.resize(m);
  for (size_t i = 0; i < m; ++i) {
    b.dxmu_var[i] = 2.0 * f.xmu[i] * b.dsq[i];
    b.dxmu[i] = b.dxmu_direct[i] + b.dxmu_var[i];
  }

  // subtract: xmu = x - mu.  d/dx = 1, d/dmu = -1 (summed over the m uses).
  b.dx_direct.resize(m);
  for (size_t i = 0; i < m; ++i) {
    b.dx_direct[i] = b.dxmu[i];
    b.dmu -= b.dxmu[i];
  }

  // mean: mu = (1/m) sum x.  d/dx_i = 1/m.  Added to the direct path.
  b.dx.resize(m);
  for (size_t i = 0; i < m; ++i) b.dx[i] = b.dx_direct[i] + b.dmu / md;
  return b;
}

}  // namespace bnorm::reference
