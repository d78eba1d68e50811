// What the experiments share: the plan (run lengths), the paper's network,
// one training run with its curve and final score, and the runs that several
// experiments read (the paper's network per variant, batch norm per batch size).
#pragma once

#include <bnorm/bnorm.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <network.hpp>
#include <string>
#include <vector>

#include "report.hpp"

namespace bnorm::demo {
using bnorm::train::Activation;
using bnorm::train::Matrix;
using bnorm::train::NetConfig;
using bnorm::train::Network;
using bnorm::train::Norm;
using bnorm::train::RunConfig;
using bnorm::train::Split;

struct Plan {
  bool full;
  int64_t probe;  // test examples used for the curves (the final score uses all)
  int64_t e1_steps, e1_every;
  int64_t e3_steps;
  int64_t e4_examples;  // training examples per batch size (experiments 4 and 7)
};

Plan make_plan(bool full);

// The paper's MNIST network: 3 hidden layers of 100 sigmoid units.
NetConfig paper_net(Norm norm);

// Plain SGD, batch 60, for the paper's network (experiments 1 and 2).
constexpr double kPaperLr = 0.1;
constexpr double kPaperMomentum = 0.0;

double percentile(std::vector<double> v, double p);

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
            const std::function<std::vector<double>(Network<float>&)>& probe = {});

// The paper's network (experiments 1 and 2 share it), trained once per
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

// The paper's network with batch norm trained at one batch size, on
// plan.e4_examples examples (learning rate kPaperLr x batch/60, momentum 0.9):
// experiment 4 and experiment 7 read the same runs.
struct BatchRun {
  Trained trained;
  double train_mode_acc = 0;  // test set in batches of that size, batch statistics
};

class BatchRuns {
 public:
  BatchRuns(const Split& train_set, const Split& test, const Plan& plan, bool tty)
      : train_(train_set), test_(test), plan_(plan), tty_(tty) {}
  const BatchRun& get(int64_t batch);

 private:
  const Split& train_;
  const Split& test_;
  Plan plan_;
  bool tty_;
  std::map<int64_t, BatchRun> runs_;
};

}  // namespace bnorm::demo
