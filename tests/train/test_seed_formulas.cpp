// The seeds' formulas as written: the ones that are right agree with finite
// differences, the known defects do not, and every corrected form does. The
// corrected values are also checked against the reference's closed form,
// which is derived independently.
#include <gtest/gtest.h>

#include <bnorm/reference.hpp>
#include <cmath>
#include <map>
#include <seed_formulas.hpp>
#include <string>

namespace bnorm::train {
namespace {

TEST(SeedFormulas, KnownDefectsBreakAndTheirCorrectionsHold) {
  const std::vector<double> x{0.3, 1.7, -0.8, 2.9, 0.4}, dy{0.7, -1.2, 0.4, 2.0, -0.5};
  const auto checks = check_seed_formulas(x, dy, 1.5, 1e-5);
  std::map<std::string, bool> holds;
  for (const auto& c : checks) {
    holds[c.source + " " + c.quantity] = c.holds;
    EXPECT_LT(c.correct_error, 1e-6) << c.source << " " << c.quantity;
  }
  EXPECT_TRUE(holds.at("000/001 (paper) dL/dvar"));
  EXPECT_TRUE(holds.at("000/001 (paper) dL/dmu"));
  EXPECT_TRUE(holds.at("001 (answer) dL/dx_i"));
  EXPECT_TRUE(holds.at("003 dL/dvar"));
  EXPECT_TRUE(holds.at("003 d var / d mu"));
  EXPECT_TRUE(holds.at("README (compact) dL/dx_i"));
  EXPECT_FALSE(holds.at("003 dL/dmu"));               // (sigma_B + eps)^(-1/2)
  EXPECT_FALSE(holds.at("003 d var / d x_i"));        // 1/(m-1)
  EXPECT_FALSE(holds.at("003 dL/dmu * dmu/dx_i"));    // exponent +1/2
  EXPECT_FALSE(holds.at("003 dL/dvar * dvar/dx_i"));  // 1/(m-1)
  EXPECT_FALSE(holds.at("003 dL/dx_i (sum of the three terms)"));
  EXPECT_FALSE(holds.at("003 dL/dx_i (last line)"));  // dL/dy_i, dropped factor
}

TEST(SeedFormulas, CorrectFormsEqualTheReferenceClosedForm) {
  const std::vector<double> x{2.0, -1.0, 0.5, 4.0, 3.5, -2.5}, dy{1.0, 0.3, -0.7, 0.2, -1.1, 0.9};
  const double gamma = 0.8, eps = 1e-3;
  const auto cf = reference::closed_form(x, dy, gamma, eps);
  for (const auto& c : check_seed_formulas(x, dy, gamma, eps)) {
    if (c.quantity.rfind("dL/dx_i", 0) != 0) continue;
    for (size_t i = 0; i < x.size(); ++i)
      EXPECT_NEAR(c.correct_value[i], cf.dx_compact[i], 1e-12) << c.source << " " << c.quantity;
  }
  for (const auto& c : check_seed_formulas(x, dy, gamma, eps))
    if (c.quantity == "dL/dvar") {
      EXPECT_NEAR(c.correct_value[0], cf.dvar, 1e-12);
    }
}

TEST(SeedFormulas, RejectsTooFewValues) {
  EXPECT_THROW(check_seed_formulas({1.0, 2.0}, {1.0, 2.0}, 1.0, 1e-5), std::invalid_argument);
  EXPECT_THROW(check_seed_formulas({1.0, 2.0, 3.0}, {1.0}, 1.0, 1e-5), std::invalid_argument);
}

}  // namespace
}  // namespace bnorm::train
