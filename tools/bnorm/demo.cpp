// bnorm demo: train real networks on Fashion-MNIST with bnorm's batch norm and
// answer the seed documents' questions with measurements. The experiments
// live in examples/demo (one file each, with the shared report and training
// helpers); this file parses the arguments, loads the data, runs the chosen
// experiments in order and writes the report.
#include <fmt/core.h>
#include <unistd.h>

#include <experiments.hpp>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "commands.hpp"

namespace bnorm::cli {
namespace {
using namespace bnorm::demo;

struct DemoOptions {
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string out = "bnorm-demo";
  bool full = false;
  std::vector<int> only;
};

int demo(const DemoOptions& o) {
  const auto t0 = Clock::now();
  for (int e : o.only)
    if (e < 1 || e > 7)
      throw std::invalid_argument("--only: experiment " + std::to_string(e) + " (want 1..7)");
  const std::set<int> want = o.only.empty() ? std::set<int>{1, 2, 3, 4, 5, 6, 7}
                                            : std::set<int>(o.only.begin(), o.only.end());
  const bool tty = isatty(fileno(stderr));
  const Plan plan = make_plan(o.full);
  Output out;
  out.dir = o.out;
  out.figures = out.dir / "experiments";
  // Load and check the data before anything is written.
  Split train_set, test;
  if (want.count(1) || want.count(2) || want.count(3) || want.count(4) || want.count(7)) {
    train_set = train::load_fashion_mnist(o.data, "train");
    test = train::load_fashion_mnist(o.data, "t10k");
    fmt::print("Fashion-MNIST from {}: {} training and {} test images\n\n", o.data, train_set.count,
               test.count);
  }
  fs::create_directories(out.figures);
  out.add(
      "# bnorm demo: batch norm on Fashion-MNIST\n\n"
      "Written by `bnorm demo{}` (`scripts/main.sh` runs it and writes this file); every "
      "number below comes from that run, with fixed seeds. Networks are trained in float32 "
      "with bnorm's `BatchNorm` layer (examples/train: Linear layers on Eigen, softmax "
      "cross-entropy, SGD with momentum); data from `{}`, pixels scaled to [0, 1].\n\n",
      o.full ? " --full" : "", o.data);
  Summary sum;
  Finals finals;
  int status = 0;
  for (const auto& r : gradient_check(out))
    if (!r.ok()) status = 1;
  PaperRuns paper_runs(train_set, test, plan, tty);
  BatchRuns batch_runs(train_set, test, plan, tty);
  auto reproduce = [&](int e) {
    out.add("Reproduce: `build/release/tools/bnorm demo --only {}{}`.\n\n", e,
            o.full ? " --full" : "");
  };
  if (want.count(1)) {
    experiment1(paper_runs, train_set, test, plan, out, sum, tty, finals);
    reproduce(1);
  }
  if (want.count(2)) {
    experiment2(paper_runs, plan, out, sum, finals);
    reproduce(2);
  }
  if (want.count(3)) {
    experiment3(train_set, test, plan, out, sum, tty, finals);
    reproduce(3);
  }
  if (want.count(4)) {
    experiment4(batch_runs, plan, out, sum, finals);
    reproduce(4);
  }
  if (want.count(5)) {
    experiment5(out, sum);
    reproduce(5);
  }
  if (want.count(6)) {
    if (experiment6(out, sum) != 0) status = 1;
    reproduce(6);
  }
  if (want.count(7)) {
    experiment7(batch_runs, train_set, test, plan, out, sum, tty, finals);
    reproduce(7);
  }
  if (!finals.empty()) baselines(out, finals);

  const double wall = seconds_since(t0);
  fmt::print("Results\n");
  std::string table = "| experiment | result |\n|---|---|\n";
  for (const auto& [k, v] : sum.rows) {
    fmt::print("  {:<48} {}\n", k, v);
    table += fmt::format("| {} | {} |\n", k, v);
  }
  out.md.insert(out.md.find("## Gradient check"),
                "## Results at a glance\n\n" + table +
                    fmt::format("\nWall time of this run: {:.0f} s ({} configuration).\n\n", wall,
                                o.full ? "full" : "short"));
  for (const auto& w : out.warnings) {
    fmt::print(stderr, "bnorm demo: warning: {}\n", w);
    out.md += "> warning: " + w + "\n";
  }
  std::ofstream md(out.dir / "experiments.md");
  md << out.md;
  if (!md) throw std::runtime_error((out.dir / "experiments.md").string() + ": cannot write");
  fmt::print("\nReport: {}  (figures in {})  wall time {:.1f} s\n",
             (out.dir / "experiments.md").string(), out.figures.string(), wall);
  return status;
}

}  // namespace

void register_demo(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand(
      "demo", "Train networks on Fashion-MNIST with batch norm and answer the seeds' questions");
  static DemoOptions o;
  cmd->add_option("--data", o.data, "Folder with the Fashion-MNIST IDX files (.gz or plain)")
      ->capture_default_str();
  cmd->add_option("--out", o.out, "Output folder for experiments.md and experiments/*.png")
      ->capture_default_str();
  cmd->add_flag("--full", o.full, "Long versions of the experiments (tens of minutes)");
  cmd->add_option("--only", o.only, "Run only these experiments (1..7)");
  cmd->callback([exit_code] { *exit_code = demo(o); });
}

}  // namespace bnorm::cli
