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

namespace {
const std::vector<int64_t> kBatches = {2, 4, 8, 16, 60};
}

void request_experiment4(BatchRuns& runs, const Plan& plan) {
  // Smallest batches first: they take the most steps.
  for (int64_t b : kBatches)
    for (int s = 0; s < plan.seeds; ++s) runs.request({Norm::batchnorm, b, 0, s});
}

void experiment4(BatchRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals) {
  fmt::print("Experiment 4: batch size, and eval mode against train mode\n");
  const int seeds = plan.seeds;
  struct Row {
    int64_t batch;
    std::vector<double> eval_acc, train_acc, diff;  // per seed
    int eval_ahead = 0;                             // seeds where eval mode beats train mode
  };
  std::vector<Row> rows;
  for (int64_t b : kBatches) {
    Row row{b, {}, {}, {}};
    for (int s = 0; s < seeds; ++s) {
      const BatchRun& r = runs.get({Norm::batchnorm, b, 0, s});
      row.eval_acc.push_back(r.eval_acc);
      row.train_acc.push_back(r.train_acc);
      row.diff.push_back(r.eval_acc - r.train_acc);
      row.eval_ahead += r.eval_acc > r.train_acc;
    }
    rows.push_back(row);
  }
  std::string dat = "# batch eval_mean eval_sd train_mean train_sd\n";
  for (const auto& r : rows) {
    const Spread e = spread(r.eval_acc), t = spread(r.train_acc);
    dat += fmt::format("{} {} {} {} {}\n", r.batch, e.mean, e.sd, t.mean, t.sd);
  }
  out.write_file("e4.dat", dat);
  out.plot("e4_batch_size",
           fmt::format("set title 'Test accuracy vs training batch size (3x100 sigmoid + BN), "
                       "{} seeds'\n"
                       "set xlabel 'batch size'; set ylabel 'test accuracy (mean, sd)'\n"
                       "set logscale x 2; set xtics (2, 4, 8, 16, 60)\n"
                       "plot 'e4.dat' u 1:2:3 w yerrorlines lw 2 t 'eval mode (running "
                       "statistics)', '' u 1:4:5 w yerrorlines lw 2 t 'train mode (statistics of "
                       "test batches of that size)'\n",
                       seeds));
  out.add(
      "## 4. Batch size and inference\n\n"
      "**Question.** At inference batch norm uses running averages of the batch statistics "
      "(eval mode); how does that compare with normalizing each test batch by its own statistics "
      "(train mode), and what do small batches do to both?\n\n"
      "**Runs.** The paper's network with batch norm, trained on {} examples per batch size "
      "(learning rate {} x batch/60, momentum 0.9), {} seeds (initial weights and batch order), "
      "test accuracy on 10,000 images as mean ± standard deviation over the seeds. Train mode "
      "evaluates the test set in batches of the training batch size.\n\n"
      "| batch | eval mode (running stats) | train mode (batch stats) | difference | eval "
      "mode ahead |\n|---|---|---|---|---|\n",
      plan.e4_examples, kPaperLr, seeds);
  std::string headline;
  int all_ahead = 0;
  for (const auto& r : rows) {
    out.add("| {} | {} | {} | {} | {} of {} seeds |\n", r.batch, pct_pm(r.eval_acc),
            pct_pm(r.train_acc), points_pm(r.diff), r.eval_ahead, seeds);
    headline += fmt::format("{}B={}: {} vs {}", headline.empty() ? "" : "; ", r.batch,
                            pct_pm(r.eval_acc), pct_pm(r.train_acc));
    finals.push_back({fmt::format("E4 batch {} eval mode (mean of {} seeds)", r.batch, seeds),
                      spread(r.eval_acc).mean});
    all_ahead += r.eval_ahead == seeds;
  }
  out.add("\n<details><summary>Per seed: eval mode / train mode</summary>\n\n| batch |");
  for (int s = 0; s < seeds; ++s) out.add(" seed {} |", s);
  out.add("\n{}\n", rule(1 + seeds));
  for (const auto& r : rows) {
    out.add("| {} |", r.batch);
    for (int s = 0; s < seeds; ++s)
      out.add(" {} / {} |", pct(r.eval_acc[size_t(s)]), pct(r.train_acc[size_t(s)]));
    out.add("\n");
  }
  out.add("\n</details>\n");
  // The answer, from these runs: where eval mode is ahead, and for which seeds.
  std::string every, some;
  for (const auto& r : rows) {
    if (r.eval_ahead == seeds)
      every += fmt::format("{}{}", every.empty() ? "" : ", ", r.batch);
    else
      some += fmt::format("; at batch {} {}", r.batch, for_seeds(r.eval_ahead, seeds));
  }
  const std::string where =
      "Eval mode is ahead of train mode" +
      (every.empty() ? std::string() : " " + for_seeds(seeds, seeds) + " at batches " + every) +
      some;
  const Row &small = rows.front(), &large = rows.back();
  out.add(
      "\n**Answer.** {}. At batch {} eval mode reaches {} "
      "against {} at batch {}, and train mode {} against {}.\n\n"
      "With a batch of m values the normalized x_hat of a unit is confined to a sphere of "
      "radius sqrt(m) (sum x_hat = 0, sum x_hat^2 = m / (1 + eps/var)); at m = 2 every unit "
      "outputs +-1 (one example +1, the other -1), so train-mode predictions depend on which "
      "other example shares the batch. Eval mode replaces those noisy statistics with fixed ones "
      "and gives each example a prediction of its own.\n\n"
      "![batch size](experiments/e4_batch_size.png)\n\n",
      where, small.batch, pct_pm(small.eval_acc), pct_pm(large.eval_acc), large.batch,
      pct_pm(small.train_acc), pct_pm(large.train_acc));
  sum.rows.push_back(
      {fmt::format("4. test accuracy eval mode vs train mode ({} seeds)", seeds), headline});
}

}  // namespace bnorm::demo
