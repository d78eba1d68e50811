// Experiment 4: batch size, and eval mode (running statistics) against train
// mode (batch statistics) at inference.
#include <fmt/core.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/reference.hpp>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "experiments.hpp"

namespace bnorm::demo {
namespace ref = bnorm::reference;

void experiment4(BatchRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals) {
  fmt::print("Experiment 4: batch size, and eval mode against train mode\n");
  const std::vector<int64_t> batches = {2, 4, 8, 16, 60};
  struct Row {
    int64_t batch;
    double eval_acc, train_acc;
  };
  std::vector<Row> rows;
  for (int64_t b : batches) {
    const BatchRun& r = runs.get(b);
    rows.push_back({b, r.trained.test_acc, r.train_mode_acc});
  }
  std::string dat = "# batch eval_mode train_mode\n";
  for (const auto& r : rows) dat += fmt::format("{} {} {}\n", r.batch, r.eval_acc, r.train_acc);
  out.write_file("e4.dat", dat);
  out.plot("e4_batch_size",
           "set title 'Test accuracy vs training batch size (3x100 sigmoid + BN)'\n"
           "set xlabel 'batch size'; set ylabel 'test accuracy'; set logscale x 2\n"
           "set xtics (2, 4, 8, 16, 60)\n"
           "plot 'e4.dat' u 1:2 w lp lw 2 t 'eval mode (running statistics)', "
           "'' u 1:3 w lp lw 2 t 'train mode (statistics of test batches of that size)'\n");
  out.add(
      "## 4. Batch size and inference\n\n"
      "**Question.** At inference batch norm uses running averages of the batch statistics "
      "(eval mode); how does that compare with normalizing each test batch by its own statistics "
      "(train mode), and what do small batches do to both?\n\n"
      "**Answer.** The paper's network with batch norm, trained on {} examples per batch size "
      "(learning rate {} x batch/60, momentum 0.9), test accuracy on 10,000 images. Train mode "
      "evaluates the test set in batches of the training batch size.\n\n"
      "| batch | eval mode (running stats) | train mode (batch stats) | difference |\n"
      "|---|---|---|---|\n",
      plan.e4_examples, kPaperLr);
  std::string headline;
  for (const auto& r : rows) {
    out.add("| {} | {} | {} | {:+.2f} points |\n", r.batch, pct(r.eval_acc), pct(r.train_acc),
            100 * (r.eval_acc - r.train_acc));
    headline += fmt::format("{}B={}: {} vs {}", headline.empty() ? "" : "; ", r.batch,
                            pct(r.eval_acc), pct(r.train_acc));
    finals.push_back({fmt::format("E4 batch {} eval mode", r.batch), r.eval_acc});
  }
  out.add(
      "\nWith a batch of m values the normalized x_hat of a unit is confined to a sphere of "
      "radius sqrt(m) (sum x_hat = 0, sum x_hat^2 = m / (1 + eps/var)); at m = 2 every unit "
      "outputs +-1 (one example +1, the other -1), so train-mode predictions depend on which "
      "other example shares the batch. Eval mode replaces those noisy statistics with fixed ones "
      "and gives each example a prediction of its own.\n\n"
      "![batch size](experiments/e4_batch_size.png)\n\n");
  sum.rows.push_back({"4. test accuracy eval mode vs train mode", headline});
}

}  // namespace bnorm::demo
