// bnorm-demo: train real networks on Fashion-MNIST with bnorm's batch norm and
// answer the seed documents' questions with measurements. The experiments
// live beside this file (one file each, with the shared report and training
// helpers); this file parses the arguments, loads the data, queues every
// wanted experiment's training runs on the workers, then writes the report
// experiment by experiment as their runs finish.
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <bnorm/bnorm.hpp>
#include <exception>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "experiments.hpp"

namespace {
using namespace bnorm::demo;

struct DemoOptions {
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string out = "out/demo";
  bool full = false;
  int seeds = 5;
  int jobs = 0;
  std::vector<int> only;
};

int demo(const DemoOptions& o) {
  const auto t0 = Clock::now();
  for (int e : o.only)
    if (e < 1 || e > 7)
      throw std::invalid_argument("--only: experiment " + std::to_string(e) + " (want 1..7)");
  const std::set<int> want = o.only.empty() ? std::set<int>{1, 2, 3, 4, 5, 6, 7}
                                            : std::set<int>(o.only.begin(), o.only.end());
  const int jobs = o.jobs > 0 ? o.jobs : std::max(1, int(std::thread::hardware_concurrency()));
  // One bar per run only when runs go one at a time; side by side they would
  // overwrite each other, and each run's closing line says enough.
  const bool tty = isatty(fileno(stderr)) && jobs == 1;
  // The workers are the parallelism: kernels inside a run stay on one thread
  // (their results are the same bits for every thread count).
  if (jobs > 1) bnorm::set_num_threads(1);
  const Plan plan = make_plan(o.full, o.seeds);
  Output out;
  out.dir = o.out;
  out.figures = out.dir / "experiments";
  // Load and check the data before anything is written.
  Split train_set, test;
  if (want.count(1) || want.count(2) || want.count(3) || want.count(4) || want.count(7)) {
    train_set = bnorm::train::load_fashion_mnist(o.data, "train");
    test = bnorm::train::load_fashion_mnist(o.data, "t10k");
    fmt::print("Fashion-MNIST from {}: {} training and {} test images\n", o.data, train_set.count,
               test.count);
  }
  fs::create_directories(out.figures);
  const std::string args = (o.full ? std::string(" --full") : std::string()) +
                           (o.seeds != 5 ? fmt::format(" --seeds {}", o.seeds) : std::string());
  out.add(
      "# bnorm demo: batch norm on Fashion-MNIST\n\n"
      "Written by `bnorm-demo{}` (`scripts/report.sh` writes the copy under docs/, "
      "`scripts/main.sh` "
      "one under out/demo/); every number below comes from that run, with fixed "
      "seeds. Networks are trained in float32 with bnorm's `BatchNorm` layer (examples/train: "
      "Linear layers on Eigen, softmax cross-entropy, SGD with momentum); data from `{}`, "
      "pixels scaled to [0, 1]. Experiments 3, 4 and 7, whose outcome depends on chaotic "
      "training, run {} seeds each (initial weights and batch order) and give mean ± standard "
      "deviation, with the values per seed; each answer says whether it holds for every "
      "seed.\n\n",
      args, o.data, plan.seeds);
  Summary sum;
  Finals finals;
  int status = 0;

  Pool pool(jobs);
  PaperRuns paper_runs(train_set, test, plan, pool, tty);
  BatchRuns batch_runs(train_set, test, plan, pool, tty);
  LrRuns lr_runs(train_set, test, plan, pool, tty);
  // Destroyed before the tables: on an error, the runs still going finish
  // before the tables they write into go away.
  struct Stop {
    Pool& pool;
    ~Stop() { pool.stop(); }
  } stop{pool};
  // Every run is queued before the report starts, longest first (the small
  // batches take the most steps), so that no worker idles between
  // experiments.
  if (want.count(7)) request_experiment7(batch_runs, plan);
  if (want.count(4)) request_experiment4(batch_runs, plan);
  if (want.count(1)) request_experiment1(paper_runs);
  if (want.count(2)) request_experiment2(paper_runs);
  if (want.count(3)) request_experiment3(lr_runs, plan);
  fmt::print("{} workers\n\n", pool.workers());

  for (const auto& r : gradient_check(out))
    if (!r.ok()) status = 1;
  auto reproduce = [&](int e) {
    out.add("Reproduce: `build/demo/examples/demo/bnorm-demo --only {}{}`.\n\n", e, args);
  };
  if (want.count(1)) {
    experiment1(paper_runs, plan, out, sum, finals);
    reproduce(1);
  }
  if (want.count(2)) {
    experiment2(paper_runs, plan, out, sum, finals);
    reproduce(2);
  }
  if (want.count(3)) {
    experiment3(lr_runs, plan, out, sum, finals);
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
    experiment7(batch_runs, plan, out, sum, finals);
    reproduce(7);
  }
  if (!finals.empty()) baselines(out, finals);

  const double wall = seconds_since(t0);
  // CPU time beside the wall time: on a shared machine the wall time says
  // more about the neighbours than about the demo.
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double cpu = double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                     1e-6 * double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
  fmt::print("Results\n");
  std::string table = "| experiment | result |\n|---|---|\n";
  for (const auto& [k, v] : sum.rows) {
    fmt::print("  {:<48} {}\n", k, v);
    table += fmt::format("| {} | {} |\n", k, v);
  }
  out.md.insert(out.md.find("## Gradient check"),
                "## Results at a glance\n\n" + table +
                    fmt::format("\nWall time of this run: {:.0f} s, CPU time {:.0f} s ({} "
                                "configuration, {} workers).\n\n",
                                wall, cpu, o.full ? "full" : "short", pool.workers()));
  for (const auto& w : out.warnings) {
    fmt::print(stderr, "bnorm-demo: warning: {}\n", w);
    out.md += "> warning: " + w + "\n";
  }
  std::ofstream md(out.dir / "experiments.md");
  md << out.md;
  if (!md) throw std::runtime_error((out.dir / "experiments.md").string() + ": cannot write");
  fmt::print("\nReport: {}  (figures in {})  wall time {:.1f} s, CPU time {:.1f} s\n",
             (out.dir / "experiments.md").string(), out.figures.string(), wall, cpu);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "bnorm-demo: train networks on Fashion-MNIST with batch norm and answer the seed "
      "documents' questions"};
  DemoOptions o;
  app.add_option("--data", o.data, "Folder with the Fashion-MNIST IDX files (.gz or plain)")
      ->capture_default_str();
  app.add_option("--out", o.out, "Output folder for experiments.md and experiments/*.png")
      ->capture_default_str();
  app.add_flag("--full", o.full, "Long versions of the experiments (tens of minutes)");
  app.add_option("--seeds", o.seeds, "Seeds of experiments 3, 4 and 7")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  app.add_option("--jobs", o.jobs, "Training runs side by side (0: one per core)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--only", o.only, "Run only these experiments (1..7)");
  try {
    app.parse(argc, argv);
    return demo(o);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bnorm-demo: error: {}\n", e.what());
    return 2;
  }
}
