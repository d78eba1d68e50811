// Experiment 6: the seeds' gradient formulas as written, against finite
// differences.
#include <fmt/core.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/reference.hpp>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "experiments.hpp"
#include "seed_formulas.hpp"

namespace bnorm::demo {
namespace ref = bnorm::reference;

int experiment6(Output& out, Summary& sum) {
  fmt::print(
      "Experiment 6: the seeds' gradient formulas, as written, against finite differences\n");
  // m = 5 and var far from 1, so that 1/(m-1) and sigma vs sigma^2 show.
  const std::vector<double> x{0.3, 1.7, -0.8, 2.9, 0.4}, dy{0.7, -1.2, 0.4, 2.0, -0.5};
  const double gamma = 1.5, eps = 1e-5;
  const auto checks = train::check_seed_formulas(x, dy, gamma, eps);
  out.add(
      "## 6. The seeds' formulas, as written\n\n"
      "Each gradient formula of the seeds, transcribed exactly as written (typos included), is "
      "evaluated on one channel x = [0.3, 1.7, -0.8, 2.9, 0.4], dL/dy = [0.7, -1.2, 0.4, 2, "
      "-0.5], gamma = 1.5, eps = 1e-5 (Algorithm 1: biased variance) and compared with central "
      "finite differences of the quantity it claims to be. A formula *holds* when its scaled "
      "error is below 1e-6. Broken ones are shown with the correct form and its error.\n\n"
      "| seed | quantity | as written | error | holds | correct form | its error |\n"
      "|---|---|---|---|---|---|---|\n");
  int held = 0, broken_fixed = 0, broken = 0;
  for (const auto& c : checks) {
    fmt::print("  {:<17} {:<34} {:>9.2e}  {}\n", c.source, c.quantity, c.written_error,
               c.holds ? "holds" : fmt::format("BROKEN (correct form: {:.1e})", c.correct_error));
    out.add("| {} | {} | `{}` | {:.1e} | {} | {} | {} |\n", c.source, c.quantity, c.as_written,
            c.written_error, c.holds ? "yes" : "**no**",
            c.correct.empty() ? std::string("") : "`" + c.correct + "`",
            c.correct.empty() ? std::string("") : fmt::format("{:.1e}", c.correct_error));
    if (c.holds)
      ++held;
    else {
      ++broken;
      if (c.correct_error <= 1e-6) ++broken_fixed;
    }
  }
  fmt::print("  {} hold, {} broken ({} of them pass once corrected)\n\n", held, broken,
             broken_fixed);
  out.add(
      "\n**Answer.** {} formulas hold and {} are broken; every broken one passes once corrected "
      "({} of {}). The paper's equations (seeds 000/001) hold. In seed 003, dL/dvar and the "
      "vanishing d var / d mu hold (the latter for 1/(m-1) as for 1/m, since sum (x_j - mu) = 0), "
      "while the (sigma_B + eps)^(-1/2) typo, the 1/(m-1) variance, the +1/2 exponent, and the "
      "last line's dL/dy_i in the sum with one factor 1/sqrt(var + eps) dropped each break the "
      "gradient.\n\n",
      held, broken, broken_fixed, broken);
  sum.rows.push_back({"6. seed formulas that hold / broken",
                      fmt::format("{} / {} (all broken ones fixed: {})", held, broken,
                                  broken_fixed == broken ? "yes" : "no")});
  return broken_fixed == broken ? 0 : 1;
}

}  // namespace bnorm::demo
