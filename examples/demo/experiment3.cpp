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

void experiment3(const Split& train_set, const Split& test, const Plan& plan, Output& out,
                 Summary& sum, bool tty, Finals& finals) {
  fmt::print("Experiment 3: affine-only layer vs batch norm vs nothing, over learning rates\n");
  const std::vector<double> lrs = {0.01, 0.03, 0.1, 0.3, 1, 3, 10};
  const std::vector<Norm> norms = {Norm::none, Norm::affine, Norm::batchnorm};
  const double trains_at = 0.5;
  std::map<Norm, std::vector<Trained>> res;
  for (Norm norm : norms)
    for (double lr : lrs) {
      NetConfig nc;
      nc.sizes = {784, 100, 100, 100, 10};
      nc.activation = Activation::relu;
      nc.norm = norm;
      nc.seed = 12;
      Network<float> net(nc);
      RunConfig rc;
      rc.net = nc;
      rc.lr = lr;
      rc.steps = plan.e3_steps;
      rc.seed = 103;
      res[norm].push_back(run(fmt::format("E3 relu 3x100, {}, lr {}", train::to_string(norm), lr),
                              net, train_set, test, rc, 0, 0, tty));
    }
  std::string dat = "# lr acc_none acc_affine acc_bn (diverged: nan)\n";
  for (size_t j = 0; j < lrs.size(); ++j) {
    dat += fmt::format("{}", lrs[j]);
    for (Norm norm : norms)
      dat += res[norm][j].diverged ? " nan" : fmt::format(" {}", res[norm][j].test_acc);
    dat += "\n";
  }
  out.write_file("e3.dat", dat);
  out.plot(
      "e3_learning_rate",
      "set title 'Test accuracy after a fixed number of steps, 3x100 ReLU, batch 60'\n"
      "set xlabel 'learning rate (momentum 0.9)'; set ylabel 'test accuracy'\n"
      "set logscale x; set yrange [0:1]\nset datafile missing 'nan'\n"
      "plot 'e3.dat' u 1:2 w lp lw 2 t 'no layer', '' u 1:3 w lp lw 2 t 'affine gamma*x+beta', "
      "'' u 1:4 w lp lw 2 t 'batch norm', 0.5 dt 2 lc 'gray' t 'trains (50%)'\n");
  out.add(
      "## 3. Why standardize (seed 002)\n\n"
      "**Question.** Gamma and beta could learn any scale and shift; is the standardization "
      "before them redundant? Compare a layer gamma*x + beta with no standardization (same "
      "parameters, same initial values gamma = 1, beta = 0), batch norm, and no layer at all.\n\n"
      "**Answer.** ReLU network 3x100 (He initialization), batch 60, momentum 0.9, {} steps per "
      "run, test accuracy on 10,000 images; 'diverged' means the loss became infinite or NaN. A "
      "run *trains* when its test accuracy reaches {:.0f}%.\n\n| learning rate |",
      plan.e3_steps, 100 * trains_at);
  for (Norm norm : norms) out.add(" {} |", train::to_string(norm));
  out.add("\n|---|---|---|---|\n");
  for (size_t j = 0; j < lrs.size(); ++j) {
    out.add("| {} |", lrs[j]);
    for (Norm norm : norms) {
      const auto& r = res[norm][j];
      out.add(" {} |", r.diverged ? std::string("diverged") : pct(r.test_acc));
    }
    out.add("\n");
  }
  std::string headline;
  out.add("\nLargest learning rate that trains: ");
  for (Norm norm : norms) {
    double best = 0;
    for (size_t j = 0; j < lrs.size(); ++j)
      if (!res[norm][j].diverged && res[norm][j].test_acc >= trains_at) best = lrs[j];
    const std::string v = best > 0 ? fmt::format("{}", best) : std::string("none");
    out.add("{} **{}**{}", train::to_string(norm), v, norm == norms.back() ? ".\n\n" : "; ");
    headline += fmt::format("{}{} {}", headline.empty() ? "" : ", ", train::to_string(norm), v);
    double top = 0;
    for (const auto& r : res[norm])
      if (!r.diverged) top = std::max(top, r.test_acc);
    finals.push_back({fmt::format("E3 best, {}", train::to_string(norm)), top});
  }
  out.add(
      "The affine layer has the same parameters as batch norm but nothing ties the scale of its "
      "output to the scale of its input: a large step that inflates the weights of one layer "
      "inflates every later activation, and the network blows up as it would without any layer. "
      "Batch norm divides that growth back out on every batch (its output is invariant to the "
      "scale of its input), so the same step sizes stay trainable.\n\n"
      "![learning rate](experiments/e3_learning_rate.png)\n\n");
  sum.rows.push_back({"3. largest trainable learning rate", headline});
}

}  // namespace bnorm::demo
