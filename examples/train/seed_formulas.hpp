// The gradient formulas of the seed documents, transcribed exactly as they
// are written (typos included), each paired with the correct form and with
// central finite differences of the quantity it claims to be.
//
// One channel: x_1..x_m, mu = mean, var = (1/m) sum (x - mu)^2 (Algorithm 1's
// biased variance), x_hat = (x - mu) / sqrt(var + eps), y = gamma x_hat + beta,
// and the loss L = sum_i dy_i y_i, so that dL/dy = dy.
#pragma once

#include <string>
#include <vector>

namespace bnorm::train {

struct FormulaCheck {
  std::string source;    // which seed, which line
  std::string quantity;  // what the formula claims to compute
  std::string as_written;
  std::string correct;  // the correct form ("" when as_written is correct)
  std::vector<double> written_value, correct_value, finite_difference;
  double written_error = 0, correct_error = 0;  // max |a - fd| / max |fd|
  bool holds = false;                           // written_error <= tolerance
};

// Evaluates every formula on the given channel; tolerance on the scaled
// error against the finite differences (step h).
std::vector<FormulaCheck> check_seed_formulas(const std::vector<double>& x,
                                              const std::vector<double>& dy, double gamma,
                                              double eps, double tolerance = 1e-6, double h = 1e-6);

}  // namespace bnorm::train
