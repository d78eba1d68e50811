// bnorm demo: train real networks on Fashion-MNIST with bnorm's batch norm and
// answer the seed documents' questions with measurements. A gradient-check
// summary first, then six experiments; a results table on the terminal, and a
// markdown report with gnuplot figures in the output folder.
#include <fmt/core.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/reference.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <network.hpp>
#include <seed_formulas.hpp>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "commands.hpp"
#include "graph.hpp"

namespace bnorm::cli {
namespace {
namespace fs = std::filesystem;
namespace ref = bnorm::reference;
using bnorm::train::Activation;
using bnorm::train::Matrix;
using bnorm::train::NetConfig;
using bnorm::train::Network;
using bnorm::train::Norm;
using bnorm::train::RunConfig;
using bnorm::train::Split;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- terminal progress ------------------------------------------------------

// One bar per training run, redrawn in place on a terminal (stderr), silent
// otherwise; the run's summary line always goes to stdout.
class Progress {
 public:
  Progress(std::string label, int64_t total, bool tty)
      : label_(std::move(label)), total_(total), tty_(tty), start_(Clock::now()) {}
  void update(int64_t step, double loss) {
    if (!tty_) return;
    const auto now = Clock::now();
    if (step != total_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const int width = 30, filled = int(width * step / std::max<int64_t>(total_, 1));
    fmt::print(stderr, "\r  {:<40} [{}{}] {:3d}%  loss {:7.4f}  {:5.1f}s", label_,
               std::string(size_t(filled), '#'), std::string(size_t(width - filled), '.'),
               int(100 * step / std::max<int64_t>(total_, 1)), loss, seconds_since(start_));
    std::fflush(stderr);
  }
  void done(const std::string& summary) {
    if (tty_) fmt::print(stderr, "\r\033[K");
    fmt::print("  {:<40} {}  ({:.1f}s)\n", label_, summary, seconds_since(start_));
    std::fflush(stdout);
  }

 private:
  std::string label_;
  int64_t total_;
  bool tty_;
  Clock::time_point start_, last_{};
};

// ---- output: markdown, data files, gnuplot ----------------------------------

struct Output {
  fs::path dir;      // the report goes here
  fs::path figures;  // dir/experiments: plots and their data
  std::string md;
  std::vector<std::string> warnings;

  template <class... Args>
  void add(fmt::format_string<Args...> f, Args&&... args) {
    fmt::format_to(std::back_inserter(md), f, std::forward<Args>(args)...);
  }
  void write_file(const std::string& name, const std::string& text) const {
    std::ofstream out(figures / name);
    out << text;
    if (!out) throw std::runtime_error((figures / name).string() + ": cannot write");
  }
  // Writes NAME.gp (the script) and runs gnuplot, which writes NAME.png.
  void plot(const std::string& name, const std::string& script) {
    const std::string full =
        "set terminal pngcairo size 900,520 font 'Helvetica,11'\nset output '" + name +
        ".png'\nset grid\nset key outside right\n" + script;
    write_file(name + ".gp", full);
    const std::string cmd = "cd '" + figures.string() + "' && gnuplot " + name + ".gp 2>&1";
    FILE* pipe = popen(cmd.c_str(), "r");
    std::string messages;
    if (pipe) {
      char buf[256];
      while (fgets(buf, sizeof buf, pipe)) messages += buf;
    }
    const int status = pipe ? pclose(pipe) : -1;
    if (status != 0)
      warnings.push_back("gnuplot failed on " + (figures / (name + ".gp")).string() + ": " +
                         messages);
  }
};

std::string pct(double v) { return fmt::format("{:.2f}%", 100 * v); }

// ---- training helpers --------------------------------------------------------

struct Plan {
  bool full;
  int64_t probe;  // test examples used for the curves (the final score uses all)
  int64_t e1_steps, e1_every;
  int64_t e3_steps;
  int64_t e4_examples;
};

Plan make_plan(bool full) {
  if (full) return {true, 10000, 50000, 1000, 5000, 600000};
  return {false, 2000, 8000, 400, 800, 90000};
}

// The paper's MNIST network: 3 hidden layers of 100 sigmoid units.
NetConfig paper_net(Norm norm) {
  NetConfig c;
  c.sizes = {784, 100, 100, 100, 10};
  c.activation = Activation::sigmoid;
  c.norm = norm;
  c.init_std = 0.1;  // "small random Gaussian values"
  c.seed = 11;
  return c;
}

// Plain SGD, batch 60, for the paper's network (experiments 1 and 2).
constexpr double kPaperLr = 0.1;
constexpr double kPaperMomentum = 0.0;

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double at = p / 100 * double(v.size() - 1);
  const size_t lo = size_t(at);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (at - double(lo)) * (v[hi] - v[lo]);
}

// ---- 0: gradient-check summary ----------------------------------------------

struct CheckRow {
  std::string what;
  double error, tolerance;
  bool ok() const { return std::isfinite(error) && error <= tolerance; }
};

std::vector<double> normals(size_t n, train::Rng& rng, double mean = 0, double sd = 1) {
  std::vector<double> v(n);
  for (double& e : v) e = mean + sd * rng.normal();
  return v;
}

template <class T>
std::pair<double, double> fast_vs_reference(const Shape& shape, const std::vector<double>& x,
                                            const std::vector<double>& dy,
                                            const std::vector<double>& w,
                                            const std::vector<double>& b) {
  const std::vector<T> xt(x.begin(), x.end()), dyt(dy.begin(), dy.end()), wt(w.begin(), w.end()),
      bt(b.begin(), b.end());
  const std::vector<double> xr(xt.begin(), xt.end()), dyr(dyt.begin(), dyt.end()),
      wr(wt.begin(), wt.end()), br(bt.begin(), bt.end());
  const size_t c = size_t(shape.c);
  std::vector<T> y(x.size()), mean(c), invstd(c), dx(x.size());
  forward_training<T>(shape, xt.data(), wt.data(), bt.data(), y.data(), mean.data(), invstd.data(),
                      nullptr, nullptr);
  backward<T>(shape, dyt.data(), xt.data(), wt.data(), mean.data(), invstd.data(), dx.data(),
              nullptr, nullptr);
  const auto f = ref::forward_training(shape, xr, wr, br, 1e-5);
  const auto g = ref::backward(ref::Method::staged, shape, dyr, xr, wr, 1e-5);
  return {ref::max_scaled_error(std::vector<double>(y.begin(), y.end()), f.y),
          ref::dx_error(shape, std::vector<double>(dx.begin(), dx.end()), g.dx, dyr, wr, f.invstd)};
}

// Every parameter of a tiny double network (linear, batch norm, sigmoid,
// linear, cross-entropy) against central finite differences of the loss.
double network_gradient_error() {
  NetConfig cfg;
  cfg.sizes = {6, 5, 4};
  cfg.norm = Norm::batchnorm;
  cfg.activation = Activation::sigmoid;
  cfg.init_std = 0.7;
  cfg.seed = 5;
  Network<double> net(cfg);
  train::Rng rng(9);
  Matrix<double> x(8, 6);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.normal();
  const std::vector<uint8_t> labels = {0, 1, 2, 3, 0, 1, 2, 3};
  // Random gamma and beta so that the check does not sit at gamma = 1.
  for (auto& p : net.params())
    for (int64_t i = 0; i < p.size; ++i) p.value[i] += 0.3 * rng.normal();
  auto loss = [&] {
    return train::softmax_cross_entropy<double>(net.forward(x), labels.data(), nullptr, nullptr);
  };
  Matrix<double> dlogits;
  train::softmax_cross_entropy<double>(net.forward(x), labels.data(), &dlogits, nullptr);
  net.backward(dlogits);
  double num = 0, den = 0;
  for (auto& p : net.params()) {
    const std::vector<double> grad(p.grad, p.grad + p.size);
    for (int64_t i = 0; i < p.size; ++i) {
      const double keep = p.value[i], h = 1e-6;
      p.value[i] = keep + h;
      const double up = loss();
      p.value[i] = keep - h;
      const double down = loss();
      p.value[i] = keep;
      num = std::max(num, std::abs(grad[size_t(i)] - (up - down) / (2 * h)));
      den = std::max(den, std::abs(grad[size_t(i)]));
    }
  }
  return num / den;
}

std::vector<CheckRow> gradient_check(Output& out) {
  fmt::print("Gradient check of the layer and of a whole network\n");
  train::Rng rng(2024);
  double fy = 0, fdx = 0, dy_ = 0, ddx = 0, fd = 0;
  const Shape shapes[] = {{4, 3, 1, Layout::NCHW},
                          {8, 5, 7, Layout::NCHW},
                          {6, 4, 9, Layout::NHWC},
                          {60, 100, 1, Layout::NCHW}};
  for (const Shape& s : shapes) {
    const auto x = normals(size_t(s.numel()), rng, 0.5, 2.0);
    const auto dy = normals(size_t(s.numel()), rng);
    const auto w = normals(size_t(s.c), rng, 1.0, 0.5), b = normals(size_t(s.c), rng);
    auto [e1, e2] = fast_vs_reference<float>(s, x, dy, w, b);
    auto [e3, e4] = fast_vs_reference<double>(s, x, dy, w, b);
    fy = std::max(fy, e1);
    fdx = std::max(fdx, e2);
    dy_ = std::max(dy_, e3);
    ddx = std::max(ddx, e4);
    if (s.numel() <= 300) {
      const auto g = ref::backward(ref::Method::staged, s, dy, x, w, 1e-5);
      const auto n = ref::finite_differences(s, dy, x, w, b, 1e-5);
      fd = std::max({fd, ref::max_scaled_error(g.dx, n.dx),
                     ref::max_scaled_error(g.dweight, n.dweight),
                     ref::max_scaled_error(g.dbias, n.dbias)});
    }
  }
  std::vector<CheckRow> rows = {
      {"layer, fast float32 vs reference: y", fy, 1e-6},
      {"layer, fast float32 vs reference: dx", fdx, 1e-6},
      {"layer, fast float64 vs reference: y", dy_, 1e-13},
      {"layer, fast float64 vs reference: dx", ddx, 1e-13},
      {"layer, reference vs finite differences", fd, 1e-6},
      {"network (linear+BN+sigmoid+CE), float64 vs finite differences", network_gradient_error(),
       1e-6},
  };
  out.add(
      "## Gradient check\n\n| check | max scaled error | tolerance | result "
      "|\n|---|---|---|---|\n");
  for (const auto& r : rows) {
    fmt::print("  {:<64} {:9.2e}  (tol {:.0e})  {}\n", r.what, r.error, r.tolerance,
               r.ok() ? "ok" : "FAIL");
    out.add("| {} | {:.2e} | {:.0e} | {} |\n", r.what, r.error, r.tolerance,
            r.ok() ? "ok" : "**FAIL**");
  }
  out.add(
      "\nShapes (n, c, s): (4,3,1), (8,5,7) NCHW, (6,4,9) NHWC, (60,100,1); the network is "
      "6-5-4 with batch norm on its hidden layer, 8 examples, every weight, bias, gamma and beta "
      "perturbed by +-1e-6. `bnorm gradcheck` runs the full sweep.\n\n");
  fmt::print("\n");
  return rows;
}

// ---- experiment 1: the paper's MNIST experiment -----------------------------

struct Curve {
  std::vector<int64_t> step;
  std::vector<double> acc, loss;
  std::vector<std::vector<double>> extra;  // per record, experiment-specific
};

struct Trained {
  Curve curve;
  double test_acc = 0, test_loss = 0;
  int64_t steps_done = 0;
  bool diverged = false;
};

// Trains one network; every `every` steps records the probe accuracy and
// calls probe(net) for the experiment's own measurements.
Trained run(const std::string& label, Network<float>& net, const Split& train_set,
            const Split& test, const RunConfig& rc, int64_t every, int64_t probe_count, bool tty,
            const std::function<std::vector<double>(Network<float>&)>& probe = {}) {
  Trained t;
  Progress bar(label, rc.steps, tty);
  double loss_sum = 0;
  int64_t loss_n = 0;
  auto record = [&](int64_t step) {
    net.train(false);
    const auto s = train::evaluate(net, test, probe_count);
    t.curve.step.push_back(step);
    t.curve.acc.push_back(s.accuracy);
    t.curve.loss.push_back(loss_n ? loss_sum / double(loss_n) : NAN);
    t.curve.extra.push_back(probe ? probe(net) : std::vector<double>{});
    loss_sum = 0;
    loss_n = 0;
    net.train(true);
  };
  if (every > 0) record(0);
  t.steps_done = train::train(net, train_set, rc, [&](int64_t step, double loss) {
    loss_sum += loss;
    ++loss_n;
    bar.update(step, loss);
    if (every > 0 && step % every == 0) record(step);
    return true;
  });
  t.diverged = t.steps_done < rc.steps;
  net.train(false);
  const auto final_score = train::evaluate(net, test);
  t.test_acc = final_score.accuracy;
  t.test_loss = final_score.loss;
  if (!std::isfinite(t.test_loss)) t.diverged = true;
  bar.done(t.diverged ? fmt::format("diverged at step {}", t.steps_done)
                      : fmt::format("test accuracy {}", pct(t.test_acc)));
  return t;
}

// Final test accuracies by run, in the order they ran.
using Finals = std::vector<std::pair<std::string, double>>;

struct Summary {
  std::vector<std::pair<std::string, std::string>> rows;  // for the final table
};

// The paper's network (experiments 1, 2 and 4 share it), trained once per
// variant: every record keeps the 15th/50th/85th percentiles of one sigmoid's
// input (unit 0 of the last hidden layer) and, per hidden layer, the mean
// over units of |mean| and of the standard deviation of the batch-norm
// inputs, all over the first 1000 test images.
struct PaperRun {
  Trained trained;
  double train_mode_acc = 0;  // test set in batches of 60, batch statistics
};
constexpr size_t kPercentiles = 0, kDrift = 3;

class PaperRuns {
 public:
  PaperRuns(const Split& train_set, const Split& test, const Plan& plan, bool tty)
      : train_(train_set), test_(test), plan_(plan), tty_(tty) {}
  const PaperRun& get(Norm norm) {
    auto it = runs_.find(norm);
    if (it != runs_.end()) return it->second;
    Network<float> net(paper_net(norm));
    RunConfig rc;
    rc.net = paper_net(norm);
    rc.lr = kPaperLr;
    rc.momentum = kPaperMomentum;
    rc.batch = 60;
    rc.steps = plan_.e1_steps;
    rc.seed = 101;
    PaperRun r;
    r.trained = run(fmt::format("sigmoid 3x100, {}", train::to_string(norm)), net, train_, test_,
                    rc, plan_.e1_every, plan_.probe, tty_, probe);
    Network<float> copy = net;
    copy.train(true);
    r.train_mode_acc = train::evaluate(copy, test_, 0, 60).accuracy;
    return runs_[norm] = std::move(r);
  }

 private:
  std::vector<double> probe_impl(Network<float>& net) const {
    net.forward(train::rows(test_, 0, std::min<int64_t>(1000, test_.count)));
    const auto& u = net.pre_activation(net.hidden_layers() - 1);
    std::vector<double> unit(size_t(u.rows()));
    for (Eigen::Index i = 0; i < u.rows(); ++i) unit[size_t(i)] = u(i, 0);
    std::vector<double> v = {percentile(unit, 15), percentile(unit, 50), percentile(unit, 85)};
    for (int l = 0; l < net.hidden_layers(); ++l) {
      const auto& z = net.linear_output(l);
      double abs_mean = 0, sd = 0;
      for (Eigen::Index k = 0; k < z.cols(); ++k) {
        const double mu = z.col(k).template cast<double>().mean();
        const double var = (z.col(k).template cast<double>().array() - mu).square().mean();
        abs_mean += std::abs(mu);
        sd += std::sqrt(var);
      }
      v.push_back(abs_mean / double(z.cols()));
      v.push_back(sd / double(z.cols()));
    }
    return v;
  }
  const Split& train_;
  const Split& test_;
  Plan plan_;
  bool tty_;
  std::function<std::vector<double>(Network<float>&)> probe = [this](Network<float>& net) {
    return probe_impl(net);
  };
  std::map<Norm, PaperRun> runs_;
};

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
  out.add(
      "![accuracy](experiments/e1_accuracy.png)\n\n![percentiles](experiments/"
      "e1_percentiles.png)\n\n");
  sum.rows.push_back(
      {"1. test accuracy, without BN / with BN", pct(a.test_acc) + " / " + pct(b.test_acc)});
}

// ---- experiment 2: gradients through the moments ----------------------------

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

// ---- experiment 3: why standardize -------------------------------------------

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

// ---- experiment 4: batch size and inference ------------------------------------

void experiment4(const Split& train_set, const Split& test, const Plan& plan, Output& out,
                 Summary& sum, bool tty, Finals& finals) {
  fmt::print("Experiment 4: batch size, and eval mode against train mode\n");
  const std::vector<int64_t> batches = {2, 4, 8, 16, 60};
  struct Row {
    int64_t batch;
    double eval_acc, train_acc;
  };
  std::vector<Row> rows;
  for (int64_t b : batches) {
    Network<float> net(paper_net(Norm::batchnorm));
    RunConfig rc;
    rc.net = paper_net(Norm::batchnorm);
    rc.batch = b;
    // The same number of examples for every batch size, and the learning
    // rate scaled with the batch so that an epoch moves the weights as far.
    rc.steps = plan.e4_examples / b;
    rc.lr = kPaperLr * double(b) / 60.0;
    rc.seed = 104;
    const auto t =
        run(fmt::format("E4 sigmoid 3x100 BN, batch {}", b), net, train_set, test, rc, 0, 0, tty);
    Network<float> copy = net;
    copy.train(true);
    rows.push_back({b, t.test_acc, train::evaluate(copy, test, 0, b).accuracy});
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

// ---- experiment 5: the graph drawn -----------------------------------------------

void experiment5(Output& out, Summary& sum) {
  fmt::print("Experiment 5: the computational graph, drawn\n");
  const std::vector<double> x{1.0, 2.0, 4.0, 9.0}, dy{0.5, -1.0, 0.25, 2.0};
  const double gamma = 1.5, beta = 0.5, eps = 1e-5;
  const auto f = ref::staged_forward(x, gamma, beta, eps);
  const auto b = ref::staged_backward(f, dy);
  const Shape shape{4, 1, 1, Layout::NCHW};
  const std::vector<double> w{gamma}, bias{beta};
  const auto fd = ref::finite_differences(shape, dy, x, w, bias, eps);
  const double err = ref::max_scaled_error(b.dx, fd.dx);
  const std::string dot = staged_graph_dot(f, b);
  out.write_file("e5_graph.dot", dot);
  std::string status = "drawn";
  try {
    render_png(dot, out.figures / "e5_graph.png");
  } catch (const std::exception& e) {
    out.warnings.push_back(e.what());
    status = "not drawn (Graphviz failed)";
  }
  fmt::print("  staged graph {} ({}), dL/dx against finite differences: {:.2e}\n\n", status,
             (out.figures / "e5_graph.png").string(), err);
  out.add(
      "## 5. The computational graph, drawn\n\n"
      "The staged graph of the reference (`bnorm::reference::staged_forward` / "
      "`staged_backward`) for one channel x = [1, 2, 4, 9], gamma = 1.5, beta = 0.5, eps = 1e-5, "
      "dL/dy = [0.5, -1, 0.25, 2]: each node with its forward value (black) and the gradient "
      "flowing back into it (red). dL/dx at the input agrees with central finite differences to "
      "{:.1e}; dL/dmu = {:.4g} and sum dL/dx = {:.1e}. `bnorm explain --graph FILE.png` draws "
      "the same figure for any input.\n\n![graph](experiments/e5_graph.png)\n\n",
      err, b.dmu, b.dx[0] + b.dx[1] + b.dx[2] + b.dx[3]);
  sum.rows.push_back({"5. staged graph dL/dx vs finite differences", fmt::format("{:.1e}", err)});
}

// ---- experiment 6: the seeds' formulas as written ---------------------------------

int experiment6(Output& out, Summary& sum) {
  fmt::print(
      "Experiment 6: the seeds' gradient formulas, as written, against finite differences\n");
  // m = 5 and var far from 1, so that 1/(m-1) and sigma vs sigma^2 show.
  const std::vector<double> x{0.3, 1.7, -0.8, 2.9, 0.4}, dy{0.7, -1.2, 0.4, 2.0, -0.5};
  const double gamma = 1.5, eps = 1e-5;
  const auto checks = train::check_seed_formulas(x, dy, gamma, eps);
  out.add(
      "## 6. The seeds' formulas, as written\n\n"
      "Each gradient formula of the seeds, transcribed exactly as written (typos included), is "
      "evaluated on one channel x = [0.3, 1.7, -0.8, 2.9, 0.4], dL/dy = [0.7, -1.2, 0.4, 2, "
      "-0.5], gamma = 1.5, eps = 1e-5 (Algorithm 1: biased variance) and compared with central "
      "finite differences of the quantity it claims to be. A formula *holds* when its scaled "
      "error is below 1e-6. Broken ones are shown with the correct form and its error.\n\n"
      "| seed | quantity | as written | error | holds | correct form | its error |\n"
      "|---|---|---|---|---|---|---|\n");
  int held = 0, broken_fixed = 0, broken = 0;
  for (const auto& c : checks) {
    fmt::print("  {:<17} {:<34} {:>9.2e}  {}\n", c.source, c.quantity, c.written_error,
               c.holds ? "holds" : fmt::format("BROKEN (correct form: {:.1e})", c.correct_error));
    out.add("| {} | {} | `{}` | {:.1e} | {} | {} | {} |\n", c.source, c.quantity, c.as_written,
            c.written_error, c.holds ? "yes" : "**no**",
            c.correct.empty() ? std::string("") : "`" + c.correct + "`",
            c.correct.empty() ? std::string("") : fmt::format("{:.1e}", c.correct_error));
    if (c.holds)
      ++held;
    else {
      ++broken;
      if (c.correct_error <= 1e-6) ++broken_fixed;
    }
  }
  fmt::print("  {} hold, {} broken ({} of them pass once corrected)\n\n", held, broken,
             broken_fixed);
  out.add(
      "\n**Answer.** {} formulas hold and {} are broken; every broken one passes once corrected "
      "({} of {}). The paper's equations (seeds 000/001) hold. In seed 003, dL/dvar and the "
      "vanishing d var / d mu hold (the latter for 1/(m-1) as for 1/m, since sum (x_j - mu) = 0), "
      "while the (sigma_B + eps)^(-1/2) typo, the 1/(m-1) variance, the +1/2 exponent, and the "
      "last line's dL/dy_i in the sum with one factor 1/sqrt(var + eps) dropped each break the "
      "gradient.\n\n",
      held, broken, broken_fixed, broken);
  sum.rows.push_back({"6. seed formulas that hold / broken",
                      fmt::format("{} / {} (all broken ones fixed: {})", held, broken,
                                  broken_fixed == broken ? "yes" : "no")});
  return broken_fixed == broken ? 0 : 1;
}

// ---- baselines -----------------------------------------------------------------

std::string read_gz(const fs::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return {};
  std::string s;
  char buf[4096];
  int got;
  while ((got = gzread(f, buf, sizeof buf)) > 0) s.append(buf, size_t(got));
  gzclose(f);
  return s;
}

void baselines(Output& out, const Finals& finals) {
  const fs::path doc = "/usr/share/doc/dataset-fashion-mnist";
  out.add("## Comparison with the published Fashion-MNIST baselines\n\n");
  std::ifstream json_file(doc / "benchmark/baselines.json");
  std::stringstream json;
  json << json_file.rdbuf();
  const std::string j = json.str();
  if (j.empty()) {
    out.add("`{}` is not installed.\n\n", (doc / "benchmark/baselines.json").string());
  } else {
    const auto at = j.find("\"MLPClassifier\"");
    std::string mlp;
    const auto hl = j.find("\"hidden_layer_sizes\"", at == std::string::npos ? 0 : at);
    if (at != std::string::npos && hl != std::string::npos) {
      const auto open = j.find('[', hl), close = j.find(']', hl);
      for (char ch : j.substr(open + 1, close - open - 1))
        if (ch != '\n' && ch != ' ') mlp += ch;
    }
    out.add(
        "The Debian package's `benchmark/baselines.json` holds the *configuration* of the "
        "data set's scikit-learn benchmark (the classifiers and their parameter grids, e.g. "
        "MLPClassifier with hidden_layer_sizes {}), not accuracies. The accuracies the package "
        "ships are the submitted results in its `README.md.gz`; the rows for fully connected "
        "networks and the human baseline:\n\n",
        mlp.empty() ? "(not found)" : mlp);
  }
  std::istringstream readme(read_gz(doc / "README.md.gz"));
  std::string line;
  std::vector<double> published;  // MLP first, then the human baseline, as in the table
  out.add("| published | Fashion test accuracy |\n|---|---|\n");
  while (std::getline(readme, line)) {
    if (line.rfind("|MLP", 0) != 0 && line.rfind("|Human", 0) != 0) continue;
    std::vector<std::string> cells;
    std::string cell;
    std::istringstream ls(line.substr(1));
    while (std::getline(ls, cell, '|')) cells.push_back(cell);
    if (cells.size() >= 3) {
      published.push_back(std::atof(cells[2].c_str()));
      auto trim = [](std::string s) {
        s.erase(0, s.find_first_not_of(' '));
        s.erase(s.find_last_not_of(' ') + 1);
        return s;
      };
      out.add("| {} | {} |\n", trim(cells[0]), trim(cells[2]));
    }
  }
  out.add("\n| this report (10,000 test images) | test accuracy |\n|---|---|\n");
  for (const auto& [name, acc] : finals) out.add("| {} | {} |\n", name, pct(acc));
  auto best = finals.front();
  for (const auto& f : finals)
    if (f.second > best.second) best = f;
  out.add("\nBest here: **{}** ({}).", pct(best.second), best.first);
  if (published.size() >= 2)
    out.add(
        " That is {:+.2f} points against the published 256-128-100 MLP ({}) and {:+.2f} "
        "points against the human baseline ({}).",
        100 * (best.second - published[0]), pct(published[0]), 100 * (best.second - published[1]),
        pct(published[1]));
  out.add(
      " The networks here are smaller (3x100) and the short configuration trains each for a "
      "few epochs at most; `--full` trains the paper's network for 50,000 steps (50 epochs).\n\n");
}

// ---- the command -------------------------------------------------------------------

struct DemoOptions {
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string out = "bnorm-demo";
  bool full = false;
  std::vector<int> only;
};

int demo(const DemoOptions& o) {
  const auto t0 = Clock::now();
  for (int e : o.only)
    if (e < 1 || e > 6)
      throw std::invalid_argument("--only: experiment " + std::to_string(e) + " (want 1..6)");
  const std::set<int> want = o.only.empty() ? std::set<int>{1, 2, 3, 4, 5, 6}
                                            : std::set<int>(o.only.begin(), o.only.end());
  const bool tty = isatty(fileno(stderr));
  const Plan plan = make_plan(o.full);
  Output out;
  out.dir = o.out;
  out.figures = out.dir / "experiments";
  // Load and check the data before anything is written.
  Split train_set, test;
  if (want.count(1) || want.count(2) || want.count(3) || want.count(4)) {
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
  auto reproduce = [&](int e) {
    out.add("Reproduce: `build/release/tools/bnorm demo --only {}{}`.\n\n", e,
            o.full ? " --full" : "");
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
    experiment3(train_set, test, plan, out, sum, tty, finals);
    reproduce(3);
  }
  if (want.count(4)) {
    experiment4(train_set, test, plan, out, sum, tty, finals);
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
  cmd->add_option("--only", o.only, "Run only these experiments (1..6)");
  cmd->callback([exit_code] { *exit_code = demo(o); });
}

}  // namespace bnorm::cli
