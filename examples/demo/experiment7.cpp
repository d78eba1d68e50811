// Experiment 7: what if the batch is small? Batch norm, Batch Renormalization
// (Ioffe, 2017) with the paper's schedule, and ghost batch norm (Hoffer,
// Hubara and Soudry, 2017) inside batches of 60.
#include <fmt/core.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "experiments.hpp"

namespace bnorm::demo {
namespace {

const std::vector<int64_t> kBatches = {2, 4, 8, 60}, kVirtualBatches = {2, 4, 8};
constexpr int64_t kGhostBatch = 60;

// One table row: a method at one (virtual) batch size, over the seeds.
struct Row {
  std::string method;
  int64_t batch = 0, virtual_batch = 0;
  std::vector<double> eval_acc, train_acc, gap;  // per seed; gap = eval - train mode
  int diverged = 0;
};

Row collect(BatchRuns& runs, Norm norm, int64_t batch, int64_t virtual_batch, int seeds) {
  Row row;
  row.method = train::to_string(norm);
  row.batch = batch;
  row.virtual_batch = virtual_batch;
  for (int s = 0; s < seeds; ++s) {
    const BatchRun& r = runs.get({norm, batch, virtual_batch, s});
    row.eval_acc.push_back(r.eval_acc);
    row.train_acc.push_back(r.train_acc);
    row.gap.push_back(r.eval_acc - r.train_acc);
    row.diverged += r.diverged;
  }
  return row;
}

std::vector<double> minus(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}

}  // namespace

void request_experiment7(BatchRuns& runs, const Plan& plan) {
  // Smallest batches first: they take the most steps.
  for (int64_t b : kBatches)
    for (int s = 0; s < plan.seeds; ++s) {
      runs.request({Norm::batchnorm, b, 0, s});
      runs.request({Norm::batch_renorm, b, 0, s});
    }
  for (int64_t v : kVirtualBatches)
    for (int s = 0; s < plan.seeds; ++s) runs.request({Norm::ghost, kGhostBatch, v, s});
}

void experiment7(BatchRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals) {
  fmt::print("Experiment 7: small batches: batch norm, Batch Renormalization, ghost batch norm\n");
  const int seeds = plan.seeds;
  std::vector<Row> bn, br, ghost;
  for (int64_t b : kBatches) {
    bn.push_back(collect(runs, Norm::batchnorm, b, 0, seeds));
    br.push_back(collect(runs, Norm::batch_renorm, b, 0, seeds));
  }
  for (int64_t v : kVirtualBatches)
    ghost.push_back(collect(runs, Norm::ghost, kGhostBatch, v, seeds));

  auto mean = [](const std::vector<double>& v) { return spread(v).mean; };
  auto sd = [](const std::vector<double>& v) { return spread(v).sd; };
  std::string dat =
      "# size, then mean sd of: bn_eval bn_train renorm_eval renorm_train ghost_eval "
      "ghost_train\n";
  for (size_t i = 0; i < kBatches.size(); ++i) {
    const bool g = i < ghost.size();
    dat += fmt::format("{} {} {} {} {} {} {} {} {}", kBatches[i], mean(bn[i].eval_acc),
                       sd(bn[i].eval_acc), mean(bn[i].train_acc), sd(bn[i].train_acc),
                       mean(br[i].eval_acc), sd(br[i].eval_acc), mean(br[i].train_acc),
                       sd(br[i].train_acc));
    dat += g ? fmt::format(" {} {} {} {}\n", mean(ghost[i].eval_acc), sd(ghost[i].eval_acc),
                           mean(ghost[i].train_acc), sd(ghost[i].train_acc))
             : std::string(" nan nan nan nan\n");
  }
  out.write_file("e7.dat", dat);
  out.plot("e7_small_batches",
           fmt::format(
               "set title 'Test accuracy vs (virtual) batch size, 3x100 sigmoid, {} seeds'\n"
               "set xlabel 'batch size (ghost: virtual batch size inside batches of 60)'\n"
               "set ylabel 'test accuracy (mean, sd)'; set logscale x 2; set xtics (2, 4, 8, 60)\n"
               "set datafile missing 'nan'; set key inside bottom right\n"
               "plot 'e7.dat' u 1:2:3 w yerrorlines lw 2 lc 1 t 'batch norm, eval', "
               "'' u 1:4:5 w yerrorlines lw 1 dt 2 lc 1 t 'batch norm, train mode', "
               "'' u 1:6:7 w yerrorlines lw 2 lc 2 t 'batch renorm, eval', "
               "'' u 1:8:9 w yerrorlines lw 1 dt 2 lc 2 t 'batch renorm, train mode', "
               "'' u 1:10:11 w yerrorlines lw 2 lc 3 t 'ghost BN (batch 60), eval', "
               "'' u 1:12:13 w yerrorlines lw 1 dt 2 lc 3 t 'ghost BN (batch 60), train mode'\n",
               seeds));

  out.add(
      "## 7. What if the batch is small?\n\n"
      "**Question.** Experiment 4 shows batch norm failing at small batches, and a gap between "
      "train-mode and eval-mode statistics. Batch Renormalization (Ioffe, 2017) corrects the "
      "batch statistics towards the running ones with r = clip(sigma_B / sigma, 1/rmax, rmax) "
      "and d = clip((mu_B - mu) / sigma, -dmax, dmax), so that training computes what inference "
      "will; does it fix small batches? And the other side of the question: ghost batch norm "
      "(Hoffer, Hubara and Soudry, 2017) normalizes groups of 2, 4 or 8 samples inside a batch "
      "of 60: how do small statistics behave when the gradient still averages over 60?\n\n"
      "**Runs.** The paper's network of experiment 4 (3x100 sigmoid, {} training examples per "
      "run, learning rate {} x batch/60, momentum 0.9, the same {} seeds). Batch norm rows are "
      "experiment 4's runs. Batch Renormalization uses the paper's schedule with its marks "
      "scaled to the run (the paper's 5k/25k/40k steps as fractions of 50k: rmax = 1, dmax = 0 "
      "for the first 10% of the steps, dmax reaching 5 at 50% and rmax reaching 3 at 80%), the "
      "same momentum 0.1 for the running statistics. Ghost batch norm trains with batches of 60 "
      "split into virtual batches. Eval mode normalizes with the running statistics; train mode "
      "evaluates the test set in batches of the training batch size with batch statistics "
      "(Batch Renormalization: with its final r and d; ghost: in groups of the virtual batch); "
      "gap = eval - train mode. Mean ± standard deviation over the seeds.\n\n"
      "| method | batch | virtual batch | eval mode | train mode | gap |\n"
      "|---|---|---|---|---|---|\n",
      plan.e4_examples, kPaperLr, seeds);
  auto row_md = [&](const Row& r) {
    out.add("| {} | {} | {} | {}{} | {} | {} |\n", r.method, r.batch,
            r.virtual_batch ? fmt::format("{}", r.virtual_batch) : std::string("-"),
            pct_pm(r.eval_acc),
            r.diverged ? fmt::format(" ({} of {} diverged)", r.diverged, seeds) : std::string(),
            pct_pm(r.train_acc), points_pm(r.gap));
  };
  for (size_t i = 0; i < kBatches.size(); ++i) {
    row_md(bn[i]);
    row_md(br[i]);
  }
  for (const Row& r : ghost) row_md(r);
  out.add(
      "\n<details><summary>Per seed: eval mode / train mode</summary>\n\n| method | batch | "
      "virtual batch |");
  for (int s = 0; s < seeds; ++s) out.add(" seed {} |", s);
  out.add("\n{}\n", rule(3 + seeds));
  auto row_seeds = [&](const Row& r) {
    out.add("| {} | {} | {} |", r.method, r.batch,
            r.virtual_batch ? fmt::format("{}", r.virtual_batch) : std::string("-"));
    for (int s = 0; s < seeds; ++s)
      out.add(" {} / {} |", pct(r.eval_acc[size_t(s)]), pct(r.train_acc[size_t(s)]));
    out.add("\n");
  };
  for (size_t i = 0; i < kBatches.size(); ++i) {
    row_seeds(bn[i]);
    row_seeds(br[i]);
  }
  for (const Row& r : ghost) row_seeds(r);
  out.add("\n</details>\n");

  // The answer, from these runs, seed by seed.
  const Row &bn2 = bn[0], &br2 = br[0], &bn60 = bn.back(), &br60 = br.back();
  const auto lift2 = minus(br2.eval_acc, bn2.eval_acc);
  const int br2_ahead =
      int(std::count_if(lift2.begin(), lift2.end(), [](double d) { return d > 0; }));
  // The largest |gap| over batches 2 to 8, per seed, for each method.
  int br_smaller_gap = 0;
  std::vector<double> bn_worst(size_t(seeds), 0), br_worst(size_t(seeds), 0);
  for (int s = 0; s < seeds; ++s) {
    for (size_t i = 0; i + 1 < kBatches.size(); ++i) {
      bn_worst[size_t(s)] = std::max(bn_worst[size_t(s)], std::abs(bn[i].gap[size_t(s)]));
      br_worst[size_t(s)] = std::max(br_worst[size_t(s)], std::abs(br[i].gap[size_t(s)]));
    }
    br_smaller_gap += br_worst[size_t(s)] < bn_worst[size_t(s)];
  }
  const auto diff60 = minus(br60.eval_acc, bn60.eval_acc);
  auto size_pm = [](const std::vector<double>& v) {
    const Spread sp = spread(v);
    return fmt::format("{:.1f} ± {:.1f} points", 100 * sp.mean, 100 * sp.sd);
  };
  // Ghost batch norm at virtual size v against batch norm trained at batch v,
  // seed by seed, and both at size 2 against batch norm at batch 60.
  constexpr double kClose = 0.02, kFar = 0.10;
  std::string ghost_pairs;
  for (size_t i = 0; i < ghost.size(); ++i) {
    const auto d = minus(ghost[i].eval_acc, bn[i].eval_acc);
    const int close =
        int(std::count_if(d.begin(), d.end(), [&](double x) { return std::abs(x) < kClose; }));
    ghost_pairs +=
        fmt::format("{}v = {}: {}, within {:.0f} points {}", i ? "; " : "", ghost[i].virtual_batch,
                    points_pm(d), 100 * kClose, for_seeds(close, seeds));
  }
  int both_far = 0;
  for (int s = 0; s < seeds; ++s) {
    const double top = bn60.eval_acc[size_t(s)];
    both_far += ghost[0].eval_acc[size_t(s)] < top - kFar && bn2.eval_acc[size_t(s)] < top - kFar;
  }
  out.add(
      "\n**Answer.** At batch 2, Batch Renormalization is ahead of batch norm in eval mode {} "
      "({} against {}, a difference of {}), still far below the {} of batch 60. Over batches 2 "
      "to 8 the largest train/eval gap is {} with batch norm and {} with Batch "
      "Renormalization, smaller with Batch Renormalization {}: with r and d the network "
      "trains on what it will compute at inference. At batch 60 Batch Renormalization gives {} "
      "against {} for batch norm ({}).\n\n"
      "Ghost batch norm inside batches of 60 against batch norm trained on batches of the "
      "virtual size, in eval mode: {}. At size 2 both end more than {:.0f} points below batch "
      "norm at batch 60 {} ({} and {} against {}). {}\n\n"
      "![small batches](experiments/e7_small_batches.png)\n\n",
      for_seeds(br2_ahead, seeds), pct_pm(br2.eval_acc), pct_pm(bn2.eval_acc), points_pm(lift2),
      pct_pm(bn60.eval_acc), size_pm(bn_worst), size_pm(br_worst), for_seeds(br_smaller_gap, seeds),
      pct_pm(br60.eval_acc), pct_pm(bn60.eval_acc), points_pm(diff60), ghost_pairs, 100 * kFar,
      for_seeds(both_far, seeds), pct_pm(ghost[0].eval_acc), pct_pm(bn2.eval_acc),
      pct_pm(bn60.eval_acc),
      both_far == seeds
          ? "What fails at small batches is normalizing with the statistics of a few samples, "
            "not only the noise of a gradient over a few samples: ghost batch norm's gradient "
            "averages over 60 (learning rate 0.1, against 0.1 x batch/60 over more steps for "
            "batch norm) and its groups of 2 hurt all the same."
          : "So the statistics of a few samples are not the whole story for every seed.");
  std::string headline;
  for (size_t i = 0; i + 1 < kBatches.size(); ++i)
    headline += fmt::format("{}B={}: {} / {}", headline.empty() ? "" : "; ", kBatches[i],
                            pct_pm(bn[i].eval_acc), pct_pm(br[i].eval_acc));
  sum.rows.push_back(
      {fmt::format("7. eval accuracy, batch norm / batch renorm ({} seeds)", seeds), headline});
  std::string ghost_line;
  for (const Row& r : ghost)
    ghost_line += fmt::format("{}V={}: {}", ghost_line.empty() ? "" : "; ", r.virtual_batch,
                              pct_pm(r.eval_acc));
  sum.rows.push_back(
      {fmt::format("7. eval accuracy, ghost BN in batches of 60 ({} seeds)", seeds), ghost_line});
  for (size_t i = 0; i < kBatches.size(); ++i)
    finals.push_back(
        {fmt::format("E7 batch renorm, batch {} (mean of {} seeds)", kBatches[i], seeds),
         mean(br[i].eval_acc)});
  for (const Row& r : ghost)
    finals.push_back(
        {fmt::format("E7 ghost BN, virtual batch {} (mean of {} seeds)", r.virtual_batch, seeds),
         mean(r.eval_acc)});
}

}  // namespace bnorm::demo
