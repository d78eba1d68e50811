// The demo's experiments, one file each (examples/demo/experiment*.cpp): each
// states its question, trains its runs, writes its table, plot and answer to
// the report and its line to the results table. `bnorm demo` (tools/bnorm)
// parses the arguments, loads the data and calls them in order.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "report.hpp"
#include "runs.hpp"

namespace bnorm::demo {

struct CheckRow {
  std::string what;
  double error, tolerance;
  bool ok() const { return std::isfinite(error) && error <= tolerance; }
};
// The gradient-check table that opens the report.
std::vector<CheckRow> gradient_check(Output& out);

void experiment1(PaperRuns& runs, const Split& train_set, const Split& test, const Plan& plan,
                 Output& out, Summary& sum, bool tty, Finals& finals);
void experiment2(PaperRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals);
void experiment3(const Split& train_set, const Split& test, const Plan& plan, Output& out,
                 Summary& sum, bool tty, Finals& finals);
void experiment4(BatchRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals);
void experiment5(Output& out, Summary& sum);
// Returns non-zero when a corrected formula disagrees with finite differences.
int experiment6(Output& out, Summary& sum);
void experiment7(BatchRuns& runs, const Split& train_set, const Split& test, const Plan& plan,
                 Output& out, Summary& sum, bool tty, Finals& finals);

// The accuracies of this run beside the published Fashion-MNIST baselines.
void baselines(Output& out, const Finals& finals);

}  // namespace bnorm::demo
