// Experiment 2: the true backward through the batch moments against the
// frozen-moments backward (seeds 000, 001).
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

void request_experiment2(PaperRuns& runs) {
  runs.request(Norm::batchnorm);
  runs.request(Norm::frozen_moments);
}

void experiment2(PaperRuns& runs, const Plan& plan, Output& out, Summary& sum, Finals& finals) {
  fmt::print("Experiment 2: backward through the moments, or with the moments frozen\n");
  const auto& tr = runs.get(Norm::batchnorm);
  const auto& fr = runs.get(Norm::frozen_moments);
  const auto& t = tr.trained;
  const auto& f = fr.trained;
  const std::map<Norm, double> train_mode_acc = {{Norm::batchnorm, tr.train_mode_acc},
                                                 {Norm::frozen_moments, fr.train_mode_acc}};
  finals.push_back({"E2 true BN", t.test_acc});
  finals.push_back({"E2 frozen moments", f.test_acc});
  std::string dat =
      "# step acc_true acc_frozen loss_true loss_frozen "
      "[absmean sd]x3 true, [absmean sd]x3 frozen\n";
  for (size_t i = 0; i < t.curve.step.size(); ++i) {
    dat += fmt::format("{} {} {} {} {}", t.curve.step[i], t.curve.acc[i], f.curve.acc[i],
                       t.curve.loss[i], f.curve.loss[i]);
    for (size_t j = kDrift; j < t.curve.extra[i].size(); ++j)
      dat += fmt::format(" {}", t.curve.extra[i][j]);
    for (size_t j = kDrift; j < f.curve.extra[i].size(); ++j)
      dat += fmt::format(" {}", f.curve.extra[i][j]);
    dat += "\n";
  }
  out.write_file("e2.dat", dat);
  out.plot("e2_drift",
           "set title 'Mean over units of |batch-norm input mean| (1000 test images)'\n"
           "set xlabel 'training step'; set ylabel '|mean|'; set logscale y\n"
           "plot 'e2.dat' u 1:6 w l lw 2 t 'true, layer 1', '' u 1:8 w l lw 2 t 'true, layer 2', "
           "'' u 1:10 w l lw 2 t 'true, layer 3', '' u 1:12 w l lw 2 dt 2 t 'frozen, layer 1', "
           "'' u 1:14 w l lw 2 dt 2 t 'frozen, layer 2', '' u 1:16 w l lw 2 dt 2 t 'frozen, layer "
           "3'\n");
  out.plot("e2_accuracy",
           "set multiplot layout 1,2\nset xlabel 'training step'\n"
           "set title 'Test accuracy (probe set, eval mode)'\n"
           "plot 'e2.dat' u 1:2 w l lw 2 t 'true', '' u 1:3 w l lw 2 t 'frozen moments'\n"
           "set title 'Training loss'\nset yrange [0:*]\n"
           "plot 'e2.dat' u 1:4 w l lw 2 t 'true', '' u 1:5 w l lw 2 t 'frozen moments'\n"
           "unset multiplot\n");
  const std::vector<double> te(t.curve.extra.back().begin() + kDrift, t.curve.extra.back().end());
  const std::vector<double> fe(f.curve.extra.back().begin() + kDrift, f.curve.extra.back().end());
  const std::vector<double> f0(f.curve.extra.front().begin() + kDrift, f.curve.extra.front().end());
  const double tl = t.curve.loss.back(), fl = f.curve.loss.back();
  out.add(
      "## 2. Gradients through the moments (seeds 000, 001)\n\n"
      "**Question.** The batch mean and variance are computed from the batch; why not treat "
      "them as constants in the backward pass?\n\n"
      "**Answer.** The same network, trained with the true backward and with the "
      "frozen-moments backward (dx = gamma * invstd * dy, `bnorm::backward_frozen_moments`), "
      "from the same weights and batches. The frozen gradient keeps the component along "
      "directions the normalization removes: shifting every input of a unit by the same amount "
      "(or scaling them) changes nothing after the normalization, yet the frozen gradient asks "
      "for it at every step, so the layer inputs drift. After {} steps the mean over units of "
      "|mean of a batch-norm input| is **{:.3g} / {:.3g} / {:.3g}** (layers 1/2/3) with frozen "
      "moments (it started at {:.3g} / {:.3g} / {:.3g}) against **{:.3g} / {:.3g} / {:.3g}** "
      "with the true gradient; the mean standard deviation of those inputs is {:.3g} / {:.3g} / "
      "{:.3g} frozen against {:.3g} / {:.3g} / {:.3g} true. Test accuracy (eval mode, running "
      "statistics) is **{}** frozen against **{}** true; in train mode (batch statistics, "
      "batches of 60) {} against {}; the training loss over the last {} steps averages {:.4f} "
      "frozen against {:.4f} true.\n\n",
      plan.e1_steps, fe[0], fe[2], fe[4], f0[0], f0[2], f0[4], te[0], te[2], te[4], fe[1], fe[3],
      fe[5], te[1], te[3], te[5], pct(f.test_acc), pct(t.test_acc),
      pct(train_mode_acc.at(Norm::frozen_moments)), pct(train_mode_acc.at(Norm::batchnorm)),
      plan.e1_every, fl, tl);
  out.add(
      "With frozen moments the network loses {:.1f} points between train mode and eval mode "
      "(true gradient: {:.1f}): the running averages used at inference lag behind inputs whose "
      "mean keeps drifting.\n\n",
      100 * (train_mode_acc.at(Norm::frozen_moments) - f.test_acc),
      100 * (train_mode_acc.at(Norm::batchnorm) - t.test_acc));
  out.add("![drift](experiments/e2_drift.png)\n\n![accuracy](experiments/e2_accuracy.png)\n\n");
  sum.rows.push_back(
      {"2. test accuracy, true BN / frozen moments", pct(t.test_acc) + " / " + pct(f.test_acc)});
  sum.rows.push_back({"2. layer-1 |input mean| at the end, true / frozen",
                      fmt::format("{:.3g} / {:.3g}", te[0], fe[0])});
}

}  // namespace bnorm::demo
