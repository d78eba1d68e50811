// The demo's experiments, one file each (examples/demo/experiment*.cpp): each
// states its question, reads its runs, writes its table, plot and answer to
// the report and its line to the results table. request_experimentN queues
// the experiment's training runs on the pool; main.cpp (the bnorm-demo
// program) parses the arguments, loads the data, requests every wanted
// experiment's runs, then calls the experiments in order.
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

void request_experiment1(PaperRuns& runs);
void experiment1(PaperRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals);
void request_experiment2(PaperRuns& runs);
void experiment2(PaperRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals);
void request_experiment3(LrRuns& runs, const Plan& plan);
void experiment3(LrRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals);
void request_experiment4(BatchRuns& runs, const Plan& plan);
void experiment4(BatchRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals);
void experiment5(Output& out, Summary& sum);
// Returns non-zero when a corrected formula disagrees with finite differences.
int experiment6(Output& out, Summary& sum);
void request_experiment7(BatchRuns& runs, const Plan& plan);
void experiment7(BatchRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals);

// The accuracies of this run beside the published Fashion-MNIST baselines.
void baselines(Output& out, const Finals& finals);

}  // namespace bnorm::demo
