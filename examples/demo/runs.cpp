#include "runs.hpp"

#include <algorithm>
#include <cmath>

namespace bnorm::demo {

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

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double at = p / 100 * double(v.size() - 1);
  const size_t lo = size_t(at);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (at - double(lo)) * (v[hi] - v[lo]);
}

Trained run(const std::string& label, Network<float>& net, const Split& train_set,
            const Split& test, const RunConfig& rc, int64_t every, int64_t probe_count, bool tty,
            const std::function<std::vector<double>(Network<float>&)>& probe) {
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

const BatchRun& BatchRuns::get(int64_t b) {
  auto it = runs_.find(b);
  if (it != runs_.end()) return it->second;
  Network<float> net(paper_net(Norm::batchnorm));
  RunConfig rc;
  rc.net = paper_net(Norm::batchnorm);
  rc.batch = b;
  // The same number of examples for every batch size, and the learning
  // rate scaled with the batch so that an epoch moves the weights as far.
  rc.steps = plan_.e4_examples / b;
  rc.lr = kPaperLr * double(b) / 60.0;
  rc.seed = 104;
  BatchRun r;
  r.trained =
      run(fmt::format("E4 sigmoid 3x100 BN, batch {}", b), net, train_, test_, rc, 0, 0, tty_);
  Network<float> copy = net;
  copy.train(true);
  r.train_mode_acc = train::evaluate(copy, test_, 0, b).accuracy;
  return runs_[b] = std::move(r);
}

}  // namespace bnorm::demo
