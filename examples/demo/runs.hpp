// What the experiments share: the plan (run lengths, seeds), the paper's
// network, one training run with its curve and final score, the pool of
// workers that trains independent runs side by side, and the runs that
// several experiments read (the paper's network per variant, the paper's
// network per normalization, batch size and seed).
#pragma once

#include <bnorm/bnorm.hpp>
#include <compare>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <network.hpp>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
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
  int seeds;            // seed indices of experiments 3, 4 and 7
};

Plan make_plan(bool full, int seeds);

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

// Runs independent training runs on a few worker threads. Each run owns its
// network, its random numbers and its batch order and only reads the data,
// and bnorm's kernels give the same bits for every thread count: a run's
// result depends on its configuration and seed alone, never on which worker
// ran it or when.
class Pool {
 public:
  explicit Pool(int workers);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  int workers() const { return int(threads_.size()); }
  // Drops the runs not started yet and waits for those running; the
  // destructor calls it too.
  void stop();
  // Queues f; runs start in the order queued. The future rethrows what f threw.
  template <class F>
  std::shared_future<std::invoke_result_t<F>> submit(F f) {
    using R = std::invoke_result_t<F>;
    auto task = std::make_shared<std::packaged_task<R()>>(std::move(f));
    std::shared_future<R> result = task->get_future().share();
    {
      std::lock_guard lock(mutex_);
      queue_.push_back([task] { (*task)(); });
    }
    ready_.notify_one();
    return result;
  }

 private:
  void work();
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Results by key, each computed once on the pool: request() queues the run
// unless it is known, get() waits for it. Requesting every run first keeps
// all workers busy while the report is written in order.
template <class Key, class Value>
class RunTable {
 public:
  explicit RunTable(Pool& pool) : pool_(pool) {}
  template <class F>
  void request(const Key& key, F make) {
    std::lock_guard lock(mutex_);
    if (!runs_.count(key)) runs_.emplace(key, pool_.submit(std::move(make)));
  }
  template <class F>
  const Value& get(const Key& key, F make) {
    request(key, std::move(make));
    std::shared_future<Value> f;
    {
      std::lock_guard lock(mutex_);
      f = runs_.at(key);
    }
    return f.get();  // a reference into the shared state, which runs_ keeps alive
  }

 private:
  Pool& pool_;
  std::mutex mutex_;
  std::map<Key, std::shared_future<Value>> runs_;
};

// Seed index s (0, 1, ...) shifts every seed of a run, the initial weights'
// and the batch order's, by s * kSeedStride; seed index 0 keeps the seeds of
// the single-seed reports. Within one seed index every variant of an
// experiment starts from the same weights and sees the same batches.
constexpr uint64_t kSeedStride = 1000;
inline uint64_t seeded(uint64_t base, int s) { return base + kSeedStride * uint64_t(s); }

// Mean and sample standard deviation (0 for a single value).
struct Spread {
  double mean = 0, sd = 0;
};
Spread spread(const std::vector<double>& v);
// Accuracies in [0, 1] as "84.12% ± 0.35" (mean and sd in percent).
std::string pct_pm(const std::vector<double>& v);
// Differences of accuracies as "+1.20 ± 0.35 points".
std::string points_pm(const std::vector<double>& v);
// "for every seed" or "for 3 of 5 seeds".
std::string for_seeds(int holds, int seeds);

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
  PaperRuns(const Split& train_set, const Split& test, const Plan& plan, Pool& pool, bool tty)
      : train_(train_set), test_(test), plan_(plan), tty_(tty), runs_(pool) {}
  void request(Norm norm, double momentum = kPaperMomentum) {
    runs_.request({norm, momentum}, [=, this] { return train(norm, momentum); });
  }
  const PaperRun& get(Norm norm, double momentum = kPaperMomentum) {
    return runs_.get({norm, momentum}, [=, this] { return train(norm, momentum); });
  }

 private:
  PaperRun train(Norm norm, double momentum) const;
  const Split& train_;
  const Split& test_;
  Plan plan_;
  bool tty_;
  RunTable<std::pair<Norm, double>, PaperRun> runs_;
};

// The paper's network with batch norm, Batch Renormalization or ghost batch
// norm trained at one batch size on plan.e4_examples examples (learning rate
// kPaperLr x batch/60, momentum 0.9), once per seed index: experiments 4 and
// 7 read the same batch-norm runs.
struct BatchKey {
  Norm norm;
  int64_t batch, virtual_batch;  // virtual_batch: ghost batch norm only, else 0
  int seed;
  auto operator<=>(const BatchKey&) const = default;
};
struct BatchRun {
  double eval_acc = 0;   // eval mode (running statistics), all test images
  double train_acc = 0;  // train mode: test batches of `batch` with their own statistics
                         // (ghost: in groups of the virtual batch; renorm: its final r, d)
  int64_t steps_done = 0;
  bool diverged = false;
};

class BatchRuns {
 public:
  BatchRuns(const Split& train_set, const Split& test, const Plan& plan, Pool& pool, bool tty)
      : train_(train_set), test_(test), plan_(plan), tty_(tty), runs_(pool) {}
  void request(const BatchKey& k) {
    runs_.request(k, [k, this] { return train(k); });
  }
  const BatchRun& get(const BatchKey& k) {
    return runs_.get(k, [k, this] { return train(k); });
  }

 private:
  BatchRun train(const BatchKey& k) const;
  const Split& train_;
  const Split& test_;
  Plan plan_;
  bool tty_;
  RunTable<BatchKey, BatchRun> runs_;
};

// Experiment 3's runs: the 3x100 ReLU network (He initialization), batch 60,
// momentum 0.9, plan.e3_steps steps, per normalization, learning rate and
// seed index.
struct LrKey {
  Norm norm;
  double lr;
  int seed;
  auto operator<=>(const LrKey&) const = default;
};
struct LrRun {
  double test_acc = 0;
  int64_t steps_done = 0;
  bool diverged = false;
};

class LrRuns {
 public:
  LrRuns(const Split& train_set, const Split& test, const Plan& plan, Pool& pool, bool tty)
      : train_(train_set), test_(test), plan_(plan), tty_(tty), runs_(pool) {}
  void request(const LrKey& k) {
    runs_.request(k, [k, this] { return train(k); });
  }
  const LrRun& get(const LrKey& k) {
    return runs_.get(k, [k, this] { return train(k); });
  }

 private:
  LrRun train(const LrKey& k) const;
  const Split& train_;
  const Split& test_;
  Plan plan_;
  bool tty_;
  RunTable<LrKey, LrRun> runs_;
};

}  // namespace bnorm::demo
