#include "runs.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace bnorm::demo {

Plan make_plan(bool full, int seeds) {
  if (full) return {true, 10000, 50000, 1000, 5000, 600000, seeds};
  return {false, 2000, 8000, 400, 800, 90000, seeds};
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

Pool::Pool(int workers) {
  for (int i = 0; i < std::max(workers, 1); ++i) threads_.emplace_back([this] { work(); });
}

Pool::~Pool() { stop(); }

void Pool::stop() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
    queue_.clear();  // their futures report broken promises; nobody waits for them
  }
  ready_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void Pool::work() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lock(mutex_);
      ready_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

Spread spread(const std::vector<double>& v) {
  Spread s;
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  if (v.size() < 2) return s;
  double ss = 0;
  for (double x : v) ss += (x - s.mean) * (x - s.mean);
  s.sd = std::sqrt(ss / double(v.size() - 1));
  return s;
}

std::string pct_pm(const std::vector<double>& v) {
  const Spread s = spread(v);
  return fmt::format("{:.2f}% ± {:.2f}", 100 * s.mean, 100 * s.sd);
}

std::string points_pm(const std::vector<double>& v) {
  const Spread s = spread(v);
  return fmt::format("{:+.2f} ± {:.2f} points", 100 * s.mean, 100 * s.sd);
}

std::string for_seeds(int holds, int seeds) {
  if (holds == seeds) return seeds == 1 ? "for the one seed run" : "for every seed";
  return fmt::format("for {} of {} seeds", holds, seeds);
}

PaperRun PaperRuns::train(Norm norm, double momentum) const {
  auto probe = [this](Network<float>& net) {
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
  };
  Network<float> net(paper_net(norm));
  RunConfig rc;
  rc.net = paper_net(norm);
  rc.lr = kPaperLr;
  rc.momentum = momentum;
  rc.batch = 60;
  rc.steps = plan_.e1_steps;
  rc.seed = 101;
  PaperRun r;
  // Only the plain-SGD runs draw curves (experiments 1 and 2).
  const bool curves = momentum == kPaperMomentum;
  const std::string label =
      momentum == kPaperMomentum
          ? fmt::format("sigmoid 3x100, {}", train::to_string(norm))
          : fmt::format("sigmoid 3x100, {}, momentum {}", train::to_string(norm), momentum);
  r.trained = run(label, net, train_, test_, rc, curves ? plan_.e1_every : 0,
                  curves ? plan_.probe : 0, tty_,
                  curves ? std::function<std::vector<double>(Network<float>&)>(probe)
                         : std::function<std::vector<double>(Network<float>&)>());
  Network<float> copy = net;
  copy.train(true);
  r.train_mode_acc = train::evaluate(copy, test_, 0, 60).accuracy;
  return r;
}

BatchRun BatchRuns::train(const BatchKey& k) const {
  NetConfig nc = paper_net(k.norm);
  nc.virtual_batch_size = k.virtual_batch;
  nc.seed = seeded(nc.seed, k.seed);
  Network<float> net(nc);
  RunConfig rc;
  rc.net = nc;
  rc.batch = k.batch;
  // The same number of examples for every batch size, and the learning
  // rate scaled with the batch so that an epoch moves the weights as far.
  rc.steps = plan_.e4_examples / k.batch;
  rc.lr = kPaperLr * double(k.batch) / 60.0;
  rc.seed = seeded(104, k.seed);
  // Batch Renormalization's schedule (Ioffe, 2017), its marks (5k, 25k, 40k
  // of a long run) scaled so that the run's length plays the paper's 50k
  // steps: batch norm for the first 10% of the steps, dmax = 5 at 50%, rmax =
  // 3 at 80%. The other layers ignore the limits.
  const RenormSchedule schedule = RenormSchedule{}.scaled(double(rc.steps) / 50000.0);
  net.set_renorm_limits(schedule.at(1));
  const std::string label =
      k.norm == Norm::ghost
          ? fmt::format("ghost BN, batch {}, virtual {}, seed {}", k.batch, k.virtual_batch, k.seed)
          : fmt::format("{}, batch {}, seed {}", train::to_string(k.norm), k.batch, k.seed);
  Progress bar(label, rc.steps, tty_);
  BatchRun r;
  r.steps_done = train::train(net, train_, rc, [&](int64_t step, double loss) {
    net.set_renorm_limits(schedule.at(step + 1));
    bar.update(step, loss);
    return true;
  });
  net.train(false);
  const auto score = train::evaluate(net, test_);
  r.eval_acc = score.accuracy;
  r.diverged = r.steps_done < rc.steps || !std::isfinite(score.loss);
  Network<float> copy = net;  // train mode updates running statistics
  copy.train(true);
  r.train_acc = train::evaluate(copy, test_, 0, k.batch).accuracy;
  bar.done(r.diverged ? fmt::format("diverged at step {}", r.steps_done)
                      : fmt::format("test accuracy {} (train mode {})", pct(r.eval_acc),
                                    pct(r.train_acc)));
  return r;
}

LrRun LrRuns::train(const LrKey& k) const {
  NetConfig nc;
  nc.sizes = {784, 100, 100, 100, 10};
  nc.activation = Activation::relu;
  nc.norm = k.norm;
  nc.seed = seeded(12, k.seed);
  Network<float> net(nc);
  RunConfig rc;
  rc.net = nc;
  rc.lr = k.lr;
  rc.steps = plan_.e3_steps;
  rc.seed = seeded(103, k.seed);
  const Trained t =
      run(fmt::format("E3 relu 3x100, {}, lr {}, seed {}", train::to_string(k.norm), k.lr, k.seed),
          net, train_, test_, rc, 0, 0, tty_);
  return {t.test_acc, t.steps_done, t.diverged};
}

}  // namespace bnorm::demo
