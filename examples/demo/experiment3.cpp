// Experiment 3: why standardize: no layer, an affine-only layer and batch
// norm over learning rates (seed 002).
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
const std::vector<double> kLrs = {0.01, 0.03, 0.1, 0.3, 1, 3, 10};
const std::vector<Norm> kNorms = {Norm::none, Norm::affine, Norm::batchnorm};
}  // namespace

void request_experiment3(LrRuns& runs, const Plan& plan) {
  for (int s = 0; s < plan.seeds; ++s)
    for (Norm norm : kNorms)
      for (double lr : kLrs) runs.request({norm, lr, s});
}

void experiment3(LrRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals) {
  fmt::print("Experiment 3: affine-only layer vs batch norm vs nothing, over learning rates\n");
  const double trains_at = 0.5;
  const int seeds = plan.seeds;
  auto at = [&](Norm norm, size_t j, int s) -> const LrRun& {
    return runs.get({norm, kLrs[j], s});
  };
  // Per norm and learning rate: the accuracies of the seeds that did not
  // diverge, and how many diverged.
  auto finite = [&](Norm norm, size_t j) {
    std::vector<double> v;
    for (int s = 0; s < seeds; ++s)
      if (!at(norm, j, s).diverged) v.push_back(at(norm, j, s).test_acc);
    return v;
  };
  // The largest learning rate that trains (reaches trains_at), per norm and seed.
  std::map<Norm, std::vector<double>> largest;
  for (Norm norm : kNorms)
    for (int s = 0; s < seeds; ++s) {
      double best = 0;
      for (size_t j = 0; j < kLrs.size(); ++j)
        if (!at(norm, j, s).diverged && at(norm, j, s).test_acc >= trains_at) best = kLrs[j];
      largest[norm].push_back(best);
    }

  std::string dat = "# lr, then per norm (none, affine, bn): mean sd of the seeds that trained\n";
  for (size_t j = 0; j < kLrs.size(); ++j) {
    dat += fmt::format("{}", kLrs[j]);
    for (Norm norm : kNorms) {
      const auto v = finite(norm, j);
      const Spread sp = spread(v);
      dat += v.empty() ? " nan nan" : fmt::format(" {} {}", sp.mean, sp.sd);
    }
    dat += "\n";
  }
  out.write_file("e3.dat", dat);
  out.plot(
      "e3_learning_rate",
      fmt::format(
          "set title 'Test accuracy after a fixed number of steps, 3x100 ReLU, batch 60, "
          "{} seeds'\n"
          "set xlabel 'learning rate (momentum 0.9)'; set ylabel 'test accuracy (mean, sd)'\n"
          "set logscale x; set yrange [0:1]\nset datafile missing 'nan'\n"
          "plot 'e3.dat' u 1:2:3 w yerrorlines lw 2 t 'no layer', "
          "'' u 1:4:5 w yerrorlines lw 2 t 'affine gamma*x+beta', "
          "'' u 1:6:7 w yerrorlines lw 2 t 'batch norm', 0.5 dt 2 lc 'gray' t 'trains (50%)'\n",
          seeds));
  out.add(
      "## 3. Why standardize (seed 002)\n\n"
      "**Question.** Gamma and beta could learn any scale and shift; is the standardization "
      "before them redundant? Compare a layer gamma*x + beta with no standardization (same "
      "parameters, same initial values gamma = 1, beta = 0), batch norm, and no layer at all.\n\n"
      "**Runs.** ReLU network 3x100 (He initialization), batch 60, momentum 0.9, {} steps per "
      "run, test accuracy on 10,000 images, {} seeds (initial weights and batch order; the "
      "three networks of one seed start from the same weights and see the same batches). "
      "'diverged' means the loss became infinite or NaN; a run *trains* when its test accuracy "
      "reaches {:.0f}%. Each cell gives the mean ± standard deviation over the seeds that did "
      "not diverge.\n\n| learning rate |",
      plan.e3_steps, seeds, 100 * trains_at);
  for (Norm norm : kNorms) out.add(" {} |", train::to_string(norm));
  out.add("\n|---|---|---|---|\n");
  for (size_t j = 0; j < kLrs.size(); ++j) {
    out.add("| {} |", kLrs[j]);
    for (Norm norm : kNorms) {
      const auto v = finite(norm, j);
      const int diverged = seeds - int(v.size());
      if (v.empty())
        out.add(" diverged |");
      else if (diverged > 0)
        out.add(" {} ({} of {} diverged) |", pct_pm(v), diverged, seeds);
      else
        out.add(" {} |", pct_pm(v));
    }
    out.add("\n");
  }
  // Per seed: the largest learning rate that trains.
  auto lr_text = [](double lr) { return lr > 0 ? fmt::format("{}", lr) : std::string("none"); };
  out.add("\nLargest learning rate that trains, per seed:\n\n| seed |");
  for (Norm norm : kNorms) out.add(" {} |", train::to_string(norm));
  out.add("\n|---|---|---|---|\n");
  for (int s = 0; s < seeds; ++s) {
    out.add("| {} |", s);
    for (Norm norm : kNorms) out.add(" {} |", lr_text(largest[norm][size_t(s)]));
    out.add("\n");
  }
  out.add("\n<details><summary>Test accuracy per seed</summary>\n\n| layer | learning rate |");
  for (int s = 0; s < seeds; ++s) out.add(" seed {} |", s);
  out.add("\n{}\n", rule(2 + seeds));
  for (Norm norm : kNorms)
    for (size_t j = 0; j < kLrs.size(); ++j) {
      out.add("| {} | {} |", train::to_string(norm), kLrs[j]);
      for (int s = 0; s < seeds; ++s) {
        const LrRun& r = at(norm, j, s);
        out.add(" {} |", r.diverged ? std::string("diverged") : pct(r.test_acc));
      }
      out.add("\n");
    }
  out.add("\n</details>\n");
  // The answer: does batch norm train at a larger rate than both others?
  int bn_larger = 0;
  for (int s = 0; s < seeds; ++s) {
    const double bn = largest[Norm::batchnorm][size_t(s)];
    bn_larger += bn > largest[Norm::none][size_t(s)] && bn > largest[Norm::affine][size_t(s)];
  }
  std::string headline;
  for (Norm norm : kNorms) {
    const auto& v = largest[norm];
    const bool same = std::all_of(v.begin(), v.end(), [&](double x) { return x == v.front(); });
    std::string each;
    for (double x : v) each += (each.empty() ? "" : ", ") + lr_text(x);
    headline += fmt::format("{}{} {}", headline.empty() ? "" : "; ", train::to_string(norm),
                            same ? lr_text(v.front()) : each);
    // Best mean accuracy over learning rates with no diverged seed.
    double top = 0;
    for (size_t j = 0; j < kLrs.size(); ++j) {
      const auto f = finite(norm, j);
      if (int(f.size()) == seeds) top = std::max(top, spread(f).mean);
    }
    finals.push_back(
        {fmt::format("E3 best, {} (mean of {} seeds)", train::to_string(norm), seeds), top});
  }
  out.add(
      "\n**Answer.** Batch norm trains at a larger learning rate than both the affine layer and "
      "no layer {}. The affine layer has the same parameters as batch norm but nothing ties the "
      "scale of its output to the scale of its input: a large step that inflates the weights of "
      "one layer inflates every later activation, and the network blows up as it would without "
      "any layer. Batch norm divides that growth back out on every batch (its output is "
      "invariant to the scale of its input), so larger step sizes stay trainable.\n\n"
      "![learning rate](experiments/e3_learning_rate.png)\n\n",
      for_seeds(bn_larger, seeds));
  sum.rows.push_back(
      {fmt::format("3. largest trainable learning rate ({} seeds; batch norm the largest {})",
                   seeds, for_seeds(bn_larger, seeds)),
       headline});
}

}  // namespace bnorm::demo
