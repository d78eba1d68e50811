// Experiment 1: the paper's MNIST experiment (3x100 sigmoid, batch 60) on
// Fashion-MNIST, with and without batch norm.
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

void request_experiment1(PaperRuns& runs) {
  for (double momentum : {kPaperMomentum, 0.9})
    for (Norm norm : {Norm::none, Norm::batchnorm}) runs.request(norm, momentum);
}

void experiment1(PaperRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals) {
  fmt::print("Experiment 1: the paper's MNIST experiment on Fashion-MNIST\n");
  const int unit = 0;
  const auto& a = runs.get(Norm::none).trained;
  const auto& b = runs.get(Norm::batchnorm).trained;
  finals.push_back({"E1 without BN", a.test_acc});
  finals.push_back({"E1 with BN", b.test_acc});
  std::string dat = "# step acc_none acc_bn p15_none p50_none p85_none p15_bn p50_bn p85_bn\n";
  for (size_t i = 0; i < a.curve.step.size(); ++i)
    dat +=
        fmt::format("{} {} {} {} {} {} {} {} {}\n", a.curve.step[i], a.curve.acc[i], b.curve.acc[i],
                    a.curve.extra[i][0], a.curve.extra[i][1], a.curve.extra[i][2],
                    b.curve.extra[i][0], b.curve.extra[i][1], b.curve.extra[i][2]);
  out.write_file("e1.dat", dat);
  out.plot("e1_accuracy",
           "set title 'Test accuracy (probe set) vs training steps, 3x100 sigmoid, batch 60'\n"
           "set xlabel 'training step'; set ylabel 'test accuracy'\n"
           "plot 'e1.dat' u 1:2 w l lw 2 t 'without BN', '' u 1:3 w l lw 2 t 'with BN'\n");
  out.plot("e1_percentiles",
           "set multiplot layout 1,2\nset xlabel 'training step'\nset key inside top left\n"
           "set format x '%.0s%c'\nset xtics rotate by -45\n"
           "set title 'Without BN: input to one sigmoid'\n"
           "plot 'e1.dat' u 1:4 w l t '15th', '' u 1:5 w l t '50th', '' u 1:6 w l t '85th'\n"
           "set title 'With BN: input to one sigmoid'\n"
           "plot 'e1.dat' u 1:7 w l t '15th', '' u 1:8 w l t '50th', '' u 1:9 w l t '85th'\n"
           "unset multiplot\n");
  // Steps to reach the no-BN network's final probe accuracy.
  int64_t bn_reach = -1;
  for (size_t i = 0; i < b.curve.step.size(); ++i)
    if (b.curve.acc[i] >= a.curve.acc.back()) {
      bn_reach = b.curve.step[i];
      break;
    }
  out.add(
      "## 1. The paper's MNIST experiment, on Fashion-MNIST\n\n"
      "**Question.** Does batch norm make the paper's network (3 fully connected hidden layers "
      "of 100 sigmoid units, mini-batches of 60, small Gaussian initial weights N(0, 0.1^2)) "
      "train faster and keep the inputs of its sigmoids stable (the paper's Figure 1)?\n\n"
      "**Answer.** After {} steps (plain SGD, learning rate {}, same initial weights and "
      "batches) the test accuracy is **{}** with batch norm against **{}** without. ",
      plan.e1_steps, kPaperLr, pct(b.test_acc), pct(a.test_acc));
  if (bn_reach >= 0)
    out.add(
        "With batch norm the network reaches the plain network's final probe accuracy after "
        "{} steps ({} without). ",
        bn_reach, a.curve.step.back());
  // The percentiles early (first record after the start), half way, and at the end.
  auto at = [](const Curve& c, size_t i) {
    return fmt::format("[{:.2f}, {:.2f}, {:.2f}]", c.extra[i][0], c.extra[i][1], c.extra[i][2]);
  };
  const size_t i1 = std::min<size_t>(1, a.curve.step.size() - 1), i2 = a.curve.step.size() / 2,
               i3 = a.curve.step.size() - 1;
  out.add(
      "The input to unit {} of the last hidden layer, as 15th/50th/85th percentiles over 1000 "
      "test images (eval mode), at steps {} / {} / {}:\n\n"
      "| network | step {} | step {} | step {} |\n|---|---|---|---|\n"
      "| without BN | {} | {} | {} |\n| with BN | {} | {} | {} |\n\n"
      "Without batch norm the distribution this sigmoid sees keeps moving as the layers below "
      "it learn; with batch norm it is pinned by the normalization and moves only through its "
      "own gamma and beta.\n\n",
      unit, a.curve.step[i1], a.curve.step[i2], a.curve.step[i3], a.curve.step[i1],
      a.curve.step[i2], a.curve.step[i3], at(a.curve, i1), at(a.curve, i2), at(a.curve, i3),
      at(b.curve, i1), at(b.curve, i2), at(b.curve, i3));
  out.add(
      "| network | test accuracy (10,000 images) | test loss |\n|---|---|---|\n"
      "| without BN | {} | {:.4f} |\n| with BN | {} | {:.4f} |\n\n",
      pct(a.test_acc), a.test_loss, pct(b.test_acc), b.test_loss);
  // The same pair with momentum 0.9: how much of batch norm's lead belongs
  // to plain SGD.
  const double with_momentum[2] = {runs.get(Norm::none, 0.9).trained.test_acc,
                                   runs.get(Norm::batchnorm, 0.9).trained.test_acc};
  out.add(
      "With momentum 0.9 instead of plain SGD (same steps, learning rate, weights and batches) "
      "the networks reach **{}** with batch norm and **{}** without: {}.\n\n",
      pct(with_momentum[1]), pct(with_momentum[0]),
      std::abs(with_momentum[1] - with_momentum[0]) < 0.01
          ? "the gap closes to within a point, so batch norm's lead above belongs to plain SGD"
          : fmt::format("batch norm's lead is {:+.2f} points with momentum against {:+.2f} "
                        "points with plain SGD",
                        100 * (with_momentum[1] - with_momentum[0]),
                        100 * (b.test_acc - a.test_acc)));
  out.add(
      "![accuracy](experiments/e1_accuracy.png)\n\n![percentiles](experiments/"
      "e1_percentiles.png)\n\n");
  sum.rows.push_back(
      {"1. test accuracy, without BN / with BN", pct(a.test_acc) + " / " + pct(b.test_acc)});
  sum.rows.push_back({"1. the same with momentum 0.9, without BN / with BN",
                      pct(with_momentum[0]) + " / " + pct(with_momentum[1])});
}

}  // namespace bnorm::demo
