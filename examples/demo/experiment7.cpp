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

struct Row {
  std::string method;
  int64_t batch = 0, virtual_batch = 0;
  double eval_acc = 0, train_acc = 0;  // eval mode; train mode on test batches of `batch`
  bool diverged = false;
  double gap() const { return eval_acc - train_acc; }
};

// The paper's network trained as experiment 4's batch-norm runs are (same
// examples, learning rate scaled with the batch, seed), with another layer.
Row train_variant(Norm norm, int64_t batch, int64_t virtual_batch, const Split& train_set,
                  const Split& test, const Plan& plan, bool tty) {
  NetConfig nc = paper_net(norm);
  nc.virtual_batch_size = virtual_batch;
  Network<float> net(nc);
  RunConfig rc;
  rc.net = nc;
  rc.batch = batch;
  rc.steps = plan.e4_examples / batch;
  rc.lr = kPaperLr * double(batch) / 60.0;
  rc.seed = 104;
  // The paper's schedule, its marks (5k, 25k, 40k of a long run) scaled so
  // that the run's length plays the paper's 50k steps: batch norm for the
  // first 10% of the steps, dmax = 5 at 50%, rmax = 3 at 80%.
  const RenormSchedule schedule = RenormSchedule{}.scaled(double(rc.steps) / 50000.0);
  net.set_renorm_limits(schedule.at(1));
  Progress bar(norm == Norm::ghost
                   ? fmt::format("E7 ghost BN, batch {}, virtual {}", batch, virtual_batch)
                   : fmt::format("E7 {}, batch {}", train::to_string(norm), batch),
               rc.steps, tty);
  const int64_t done = train::train(net, train_set, rc, [&](int64_t step, double loss) {
    net.set_renorm_limits(schedule.at(step + 1));
    bar.update(step, loss);
    return true;
  });
  Row row;
  row.method = train::to_string(norm);
  row.batch = batch;
  row.virtual_batch = virtual_batch;
  net.train(false);
  const auto score = train::evaluate(net, test);
  row.eval_acc = score.accuracy;
  row.diverged = done < rc.steps || !std::isfinite(score.loss);
  Network<float> copy = net;  // train mode updates running statistics
  copy.train(true);
  row.train_acc = train::evaluate(copy, test, 0, batch).accuracy;
  bar.done(row.diverged ? fmt::format("diverged at step {}", done)
                        : fmt::format("test accuracy {} (train mode {})", pct(row.eval_acc),
                                      pct(row.train_acc)));
  return row;
}

}  // namespace

void experiment7(BatchRuns& runs, const Split& train_set, const Split& test, const Plan& plan,
                 Output& out, Summary& sum, bool tty, Finals& finals) {
  fmt::print("Experiment 7: small batches: batch norm, Batch Renormalization, ghost batch norm\n");
  const std::vector<int64_t> batches = {2, 4, 8, 60}, virtual_batches = {2, 4, 8};
  std::vector<Row> bn, br, ghost;
  for (int64_t b : batches) {
    const BatchRun& r = runs.get(b);
    bn.push_back({"batch norm", b, 0, r.trained.test_acc, r.train_mode_acc, r.trained.diverged});
  }
  for (int64_t b : batches)
    br.push_back(train_variant(Norm::batch_renorm, b, 0, train_set, test, plan, tty));
  for (int64_t v : virtual_batches)
    ghost.push_back(train_variant(Norm::ghost, 60, v, train_set, test, plan, tty));

  std::string dat = "# size bn_eval bn_train renorm_eval renorm_train ghost_eval ghost_train\n";
  for (size_t i = 0; i < batches.size(); ++i) {
    const bool g = i < ghost.size();
    dat += fmt::format("{} {} {} {} {} {} {}\n", batches[i], bn[i].eval_acc, bn[i].train_acc,
                       br[i].eval_acc, br[i].train_acc,
                       g ? fmt::format("{}", ghost[i].eval_acc) : "nan",
                       g ? fmt::format("{}", ghost[i].train_acc) : "nan");
  }
  out.write_file("e7.dat", dat);
  out.plot("e7_small_batches",
           "set title 'Test accuracy vs (virtual) batch size, 3x100 sigmoid'\n"
           "set xlabel 'batch size (ghost: virtual batch size inside batches of 60)'\n"
           "set ylabel 'test accuracy'; set logscale x 2; set xtics (2, 4, 8, 60)\n"
           "set datafile missing 'nan'; set key inside bottom right\n"
           "plot 'e7.dat' u 1:2 w lp lw 2 lc 1 t 'batch norm, eval', "
           "'' u 1:3 w lp lw 1 dt 2 lc 1 t 'batch norm, train mode', "
           "'' u 1:4 w lp lw 2 lc 2 t 'batch renorm, eval', "
           "'' u 1:5 w lp lw 1 dt 2 lc 2 t 'batch renorm, train mode', "
           "'' u 1:6 w lp lw 2 lc 3 t 'ghost BN (batch 60), eval', "
           "'' u 1:7 w lp lw 1 dt 2 lc 3 t 'ghost BN (batch 60), train mode'\n");

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
      "run, learning rate {} x batch/60, momentum 0.9, the same seeds). Batch norm rows are "
      "experiment 4's runs. Batch Renormalization uses the paper's schedule with its marks "
      "scaled to the run (the paper's 5k/25k/40k steps as fractions of 50k: rmax = 1, dmax = 0 "
      "for the first 10% of the steps, dmax reaching 5 at 50% and rmax reaching 3 at 80%), the "
      "same momentum 0.1 for the running statistics. Ghost batch norm trains with batches of 60 "
      "split into virtual batches. Eval mode normalizes with the running statistics; train mode "
      "evaluates the test set in batches of the training batch size with batch statistics "
      "(Batch Renormalization: with its final r and d; ghost: in groups of the virtual batch); "
      "gap = eval - train mode.\n\n"
      "| method | batch | virtual batch | eval mode | train mode | gap |\n"
      "|---|---|---|---|---|---|\n",
      plan.e4_examples, kPaperLr);
  auto row_md = [&](const Row& r) {
    out.add("| {} | {} | {} | {} | {} | {:+.2f} points |\n", r.method, r.batch,
            r.virtual_batch ? fmt::format("{}", r.virtual_batch) : std::string("-"),
            r.diverged ? std::string("diverged") : pct(r.eval_acc), pct(r.train_acc),
            100 * r.gap());
  };
  for (size_t i = 0; i < batches.size(); ++i) {
    row_md(bn[i]);
    row_md(br[i]);
  }
  for (const Row& r : ghost) row_md(r);

  // The answer, from this run's numbers.
  const Row &bn2 = bn[0], &br2 = br[0], &bn60 = bn.back(), &br60 = br.back();
  double worst_br_gap = 0, worst_bn_gap = 0, ghost_vs_bn = 0;
  for (size_t i = 0; i + 1 < batches.size(); ++i) {
    worst_br_gap = std::max(worst_br_gap, std::abs(br[i].gap()));
    worst_bn_gap = std::max(worst_bn_gap, std::abs(bn[i].gap()));
  }
  std::string ghost_pairs;
  for (size_t i = 0; i < ghost.size(); ++i) {
    ghost_vs_bn = std::max(ghost_vs_bn, std::abs(ghost[i].eval_acc - bn[i].eval_acc));
    ghost_pairs += fmt::format("{}{} against {} (v = {})", i ? ", " : "", pct(ghost[i].eval_acc),
                               pct(bn[i].eval_acc), ghost[i].virtual_batch);
  }
  out.add(
      "\n**Answer.** {} Over batches 2 to 8 the largest train/eval gap is {:.1f} points with "
      "batch norm and {:.1f} with Batch Renormalization: with r and d the network trains on "
      "what it will compute at inference. At batch 60 Batch Renormalization gives {} against "
      "{} for batch norm. {}\n\n"
      "![small batches](experiments/e7_small_batches.png)\n\n",
      br2.eval_acc > bn2.eval_acc
          ? fmt::format("Batch Renormalization helps most where batch norm fails: at batch 2 it "
                        "reaches {} in eval mode against {} ({:+.1f} points), though still far "
                        "below the {} of batch 60.",
                        pct(br2.eval_acc), pct(bn2.eval_acc), 100 * (br2.eval_acc - bn2.eval_acc),
                        pct(bn60.eval_acc))
          : fmt::format("Batch Renormalization does not beat batch norm at batch 2 in eval mode "
                        "here ({} against {}).",
                        pct(br2.eval_acc), pct(bn2.eval_acc)),
      100 * worst_bn_gap, 100 * worst_br_gap, pct(br60.eval_acc), pct(bn60.eval_acc),
      ghost_vs_bn < 0.02
          ? fmt::format("Ghost batch norm inside batches of 60 ends where batch norm trained on "
                        "batches of the virtual size ends, within {:.1f} points in eval mode ({}): "
                        "what fails at small batches is normalizing with the statistics of a few "
                        "samples, not the noise of a gradient over a few samples, since here the "
                        "gradient averages over 60 and the small groups hurt all the same.",
                        100 * ghost_vs_bn, ghost_pairs)
          : fmt::format("Ghost batch norm inside batches of 60 differs from batch norm trained "
                        "on batches of the virtual size by up to {:.1f} points in eval mode ({}).",
                        100 * ghost_vs_bn, ghost_pairs));
  std::string headline;
  for (size_t i = 0; i + 1 < batches.size(); ++i)
    headline += fmt::format("{}B={}: {} / {}", headline.empty() ? "" : "; ", batches[i],
                            pct(bn[i].eval_acc), pct(br[i].eval_acc));
  sum.rows.push_back({"7. eval accuracy, batch norm / batch renorm", headline});
  std::string ghost_line;
  for (const Row& r : ghost)
    ghost_line +=
        fmt::format("{}V={}: {}", ghost_line.empty() ? "" : "; ", r.virtual_batch, pct(r.eval_acc));
  sum.rows.push_back({"7. eval accuracy, ghost BN in batches of 60", ghost_line});
  for (size_t i = 0; i < batches.size(); ++i)
    finals.push_back({fmt::format("E7 batch renorm, batch {}", batches[i]), br[i].eval_acc});
  for (const Row& r : ghost)
    finals.push_back({fmt::format("E7 ghost BN, virtual batch {}", r.virtual_batch), r.eval_acc});
}

}  // namespace bnorm::demo
