#include "seed_formulas.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>

namespace bnorm::train {
namespace {

using Vec = std::vector<double>;

double mean_of(const Vec& v) {
  double s = 0;
  for (double e : v) s += e;
  return s / double(v.size());
}
double biased_var(const Vec& x, double mu) {
  double s = 0;
  for (double e : x) s += (e - mu) * (e - mu);
  return s / double(x.size());
}

// The loss with mu and var as free arguments: L(mu, var) = sum dy_i (gamma
// (x_i - mu) / sqrt(var + eps) + beta); beta drops out of every gradient.
double loss(const Vec& x, const Vec& dy, double gamma, double eps, double mu, double var) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += dy[i] * gamma * (x[i] - mu) / std::sqrt(var + eps);
  return s;
}

double central(const std::function<double(double)>& f, double at, double h) {
  const double step = h * std::max(1.0, std::abs(at));
  return (f(at + step) - f(at - step)) / (2 * step);
}

// max |a - fd| / max(max |fd|, scale): scale stands in for the size of a
// quantity that is zero, whose finite difference is only rounding.
double scaled_error(const Vec& a, const Vec& fd, double scale) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::abs(a[i] - fd[i]));
    den = std::max(den, std::abs(fd[i]));
  }
  return num / std::max(den, scale);
}

}  // namespace

std::vector<FormulaCheck> check_seed_formulas(const Vec& x, const Vec& dy, double gamma, double eps,
                                              double tolerance, double h) {
  const size_t m = x.size();
  if (m < 3 || dy.size() != m)
    throw std::invalid_argument("check_seed_formulas: need m >= 3 values in x and as many in dy");
  const double md = double(m);
  const double mu = mean_of(x), var = biased_var(x, mu), sigma = std::sqrt(var);
  const double invstd = 1 / std::sqrt(var + eps);
  Vec xhat(m);
  for (size_t i = 0; i < m; ++i) xhat[i] = (x[i] - mu) * invstd;
  double sum_dy = 0, sum_xmu_dy = 0, sum_dy_xhat = 0;
  for (size_t i = 0; i < m; ++i) {
    sum_dy += dy[i];
    sum_xmu_dy += (x[i] - mu) * dy[i];
    sum_dy_xhat += dy[i] * xhat[i];
  }

  // ---- finite differences of the quantities the formulas claim ----------
  // dL/dvar: partial, mu held fixed.
  const double fd_dvar = central([&](double v) { return loss(x, dy, gamma, eps, mu, v); }, var, h);
  // dL/dmu: total, var follows mu through var(mu) = (1/m) sum (x_i - mu)^2.
  const double fd_dmu =
      central([&](double u) { return loss(x, dy, gamma, eps, u, biased_var(x, u)); }, mu, h);
  // d var / d mu with var(mu) as above.
  const double fd_dvar_dmu = central([&](double u) { return biased_var(x, u); }, mu, h);
  // Per input: d var / d x_i and dL/dx_i through the whole forward pass.
  Vec fd_dvar_dx(m), fd_dx(m);
  for (size_t i = 0; i < m; ++i) {
    auto at = [&](double xi, bool want_loss) {
      Vec xs = x;
      xs[i] = xi;
      const double u = mean_of(xs), v = biased_var(xs, u);
      return want_loss ? loss(xs, dy, gamma, eps, u, v) : v;
    };
    fd_dvar_dx[i] = central([&](double xi) { return at(xi, false); }, x[i], h);
    fd_dx[i] = central([&](double xi) { return at(xi, true); }, x[i], h);
  }

  std::vector<FormulaCheck> out;
  auto add = [&](std::string source, std::string quantity, std::string written, Vec wv,
                 std::string correct, Vec cv, Vec fd, double scale = 0) {
    FormulaCheck c;
    c.source = std::move(source);
    c.quantity = std::move(quantity);
    c.as_written = std::move(written);
    c.correct = std::move(correct);
    c.written_value = std::move(wv);
    c.correct_value = cv.empty() ? c.written_value : std::move(cv);
    c.finite_difference = std::move(fd);
    c.written_error = scaled_error(c.written_value, c.finite_difference, scale);
    c.correct_error = scaled_error(c.correct_value, c.finite_difference, scale);
    c.holds = c.written_error <= tolerance;
    out.push_back(std::move(c));
  };

  // ---- the paper's equations, quoted in seeds 000 and 001 ----------------
  const double paper_dvar = -0.5 * std::pow(var + eps, -1.5) * gamma * sum_xmu_dy;
  double sum_minus2_xmu = 0;
  for (size_t i = 0; i < m; ++i) sum_minus2_xmu += -2 * (x[i] - mu);
  const double paper_dmu =
      -gamma * sum_dy / std::sqrt(var + eps) + paper_dvar * sum_minus2_xmu / md;
  add("000/001 (paper)", "dL/dvar", "sum_i dL/dx_hat_i (x_i - mu) (-1/2) (var + eps)^(-3/2)",
      {paper_dvar}, "", {}, {fd_dvar});
  add("000/001 (paper)", "dL/dmu",
      "sum_i dL/dx_hat_i (-1/sqrt(var + eps)) + dL/dvar sum_i -2 (x_i - mu) / m", {paper_dmu}, "",
      {}, {fd_dmu});
  Vec paper_dx(m);
  for (size_t i = 0; i < m; ++i)
    paper_dx[i] = dy[i] * gamma * invstd + paper_dvar * 2 * (x[i] - mu) / md + paper_dmu / md;
  add("001 (answer)", "dL/dx_i",
      "dL/dx_hat_i / sqrt(var + eps) + dL/dvar 2 (x_i - mu) / m + dL/dmu / m", paper_dx, "", {},
      fd_dx);

  // ---- seed 003, line by line --------------------------------------------
  add("003", "dL/dvar", "-gamma (1/2) (var + eps)^(-3/2) sum_j (x_j - mu) dL/dy_j",
      {-gamma * 0.5 * std::pow(var + eps, -1.5) * sum_xmu_dy}, "", {}, {fd_dvar});
  // (sigma_B + eps)^(-1/2): sigma_B where sigma_B^2 is meant.
  add("003", "dL/dmu", "-gamma (sigma_B + eps)^(-1/2) sum_j dL/dy_j",
      {-gamma * std::pow(sigma + eps, -0.5) * sum_dy},
      "-gamma (sigma_B^2 + eps)^(-1/2) sum_j dL/dy_j", {-gamma * invstd * sum_dy}, {fd_dmu});
  double sum_xmu = 0, sum_abs_xmu = 0;
  for (size_t i = 0; i < m; ++i) {
    sum_xmu += x[i] - mu;
    sum_abs_xmu += std::abs(x[i] - mu);
  }
  // Zero, so measured against the size of its terms, 2/m sum_j |x_j - mu|.
  add("003", "d var / d mu", "2/(m-1) sum_j (x_j - mu) = 0", {2 / (md - 1) * sum_xmu}, "", {},
      {fd_dvar_dmu}, 2 / md * sum_abs_xmu);
  Vec w_dvar_dx(m), c_dvar_dx(m);
  for (size_t i = 0; i < m; ++i) {
    w_dvar_dx[i] = 2 / (md - 1) * (x[i] - mu);
    c_dvar_dx[i] = 2 / md * (x[i] - mu);
  }
  add("003", "d var / d x_i", "2/(m-1) (x_i - mu)   (the unbiased variance)", w_dvar_dx,
      "2/m (x_i - mu)   (Algorithm 1 normalizes with the biased 1/m variance)", c_dvar_dx,
      fd_dvar_dx);
  // The three terms of dL/dx_i, each against the finite-difference value of
  // the chain-rule product it stands for.
  Vec w_mean_term(m, -gamma / md * std::pow(var + eps, 0.5) * sum_dy),
      c_mean_term(m, -gamma / md * invstd * sum_dy), fd_mean_term(m, fd_dmu / md);
  add("003", "dL/dmu * dmu/dx_i", "-(gamma/m) (sigma_B^2 + eps)^(+1/2) sum_j dL/dy_j", w_mean_term,
      "-(gamma/m) (sigma_B^2 + eps)^(-1/2) sum_j dL/dy_j", c_mean_term, fd_mean_term);
  Vec w_var_term(m), c_var_term(m), fd_var_term(m);
  for (size_t i = 0; i < m; ++i) {
    w_var_term[i] = -gamma / (md - 1) * (x[i] - mu) * std::pow(var + eps, -1.5) * sum_xmu_dy;
    c_var_term[i] = -gamma / md * (x[i] - mu) * std::pow(var + eps, -1.5) * sum_xmu_dy;
    fd_var_term[i] = fd_dvar * fd_dvar_dx[i];
  }
  add("003", "dL/dvar * dvar/dx_i",
      "-gamma/(m-1) (x_i - mu) (sigma_B^2 + eps)^(-3/2) sum_j (x_j - mu) dL/dy_j", w_var_term,
      "-gamma/m (x_i - mu) (sigma_B^2 + eps)^(-3/2) sum_j (x_j - mu) dL/dy_j", c_var_term,
      fd_var_term);
  Vec w_dx_sum(m), w_dx_final(m), c_dx(m);
  for (size_t i = 0; i < m; ++i) {
    w_dx_sum[i] = gamma * dy[i] * invstd + w_mean_term[i] + w_var_term[i];
    // The last line: the sum multiplies dL/dy_i (not dL/dy_j), divides by
    // m-1, and sums (x_j - mu) where x_hat_j = (x_j - mu) invstd belongs.
    w_dx_final[i] = gamma * invstd * (dy[i] - sum_dy / md - xhat[i] / (md - 1) * sum_xmu * dy[i]);
    c_dx[i] = gamma * invstd * (dy[i] - sum_dy / md - xhat[i] * sum_dy_xhat / md);
  }
  add("003", "dL/dx_i (sum of the three terms)",
      "gamma dL/dy_i (var+eps)^(-1/2) - (gamma/m) (var+eps)^(1/2) sum_j dL/dy_j - gamma/(m-1) "
      "(x_i - mu) (var+eps)^(-3/2) sum_j (x_j - mu) dL/dy_j",
      w_dx_sum,
      "gamma (var+eps)^(-1/2) (dL/dy_i - mean_j dL/dy_j - x_hat_i mean_j x_hat_j dL/dy_j)", c_dx,
      fd_dx);
  add("003", "dL/dx_i (last line)",
      "gamma (var+eps)^(-1/2) (dL/dy_i - (1/m) sum_j dL/dy_j - x_hat_i/(m-1) sum_j (x_j - mu) "
      "dL/dy_i)",
      w_dx_final,
      "gamma (var+eps)^(-1/2) (dL/dy_i - (1/m) sum_j dL/dy_j - x_hat_i (1/m) sum_j x_hat_j "
      "dL/dy_j)",
      c_dx, fd_dx);
  add("README (compact)", "dL/dx_i",
      "gamma / sqrt(var + eps) (dy_i - mean(dy) - x_hat_i mean(dy x_hat))", c_dx, "", {}, fd_dx);
  return out;
}

}  // namespace bnorm::train
