// A small fully connected network for the demo: Linear layers on Eigen, an
// optional normalization layer between each linear layer and its
// activation, softmax cross-entropy and SGD with momentum.
//
// Activations are row-major (batch, features) matrices, which is bnorm's
// NCHW layout with s = 1, so they go to bnorm without a copy.
#pragma once

#include <Eigen/Core>
#include <bnorm/bnorm.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "idx.hpp"

namespace bnorm::train {

template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;

// What sits between a hidden linear layer and its activation.
enum class Norm {
  none,            // nothing: activation(W x + b)
  batchnorm,       // bnorm::BatchNorm, gradient through the batch mean and variance
  frozen_moments,  // batch norm forward, backward with mean and variance held constant
  affine,          // gamma * x + beta per unit, no standardization
  batch_renorm,    // Batch Renormalization (Ioffe, 2017); limits set by Network::set_renorm_limits
  ghost,           // ghost batch norm: statistics per group of NetConfig::virtual_batch_size
};
enum class Activation { sigmoid, relu };
const char* to_string(Norm norm);
const char* to_string(Activation activation);

// Deterministic random numbers that do not depend on the standard library's
// distributions (those differ between implementations).
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1)
  double normal();   // N(0, 1), Box-Muller
  uint64_t below(uint64_t n) { return next() % n; }

 private:
  uint64_t state_;
};

struct NetConfig {
  std::vector<int> sizes = {784, 100, 100, 100, 10};  // input, hidden..., classes
  Activation activation = Activation::sigmoid;
  Norm norm = Norm::batchnorm;
  // Standard deviation of the Gaussian initial weights; 0 picks
  // 1/sqrt(fan_in) (sigmoid) or sqrt(2/fan_in) (ReLU). Biases start at 0.
  double init_std = 0;
  double bn_momentum = 0.1;
  int64_t virtual_batch_size = 0;  // Norm::ghost only
  uint64_t seed = 1;
};

// A parameter tensor and its gradient, for the optimizer.
template <class T>
struct Param {
  T* value;
  const T* grad;
  int64_t size;
};

template <class T>
class NormLayer {
 public:
  NormLayer(Norm kind, int features, double momentum, int64_t virtual_batch_size = 0);
  Matrix<T> forward(const Matrix<T>& z, bool training);
  Matrix<T> backward(const Matrix<T>& du);
  void params(std::vector<Param<T>>& out);
  Norm kind() const { return kind_; }
  void set_renorm_limits(const bnorm::RenormLimits& limits) { limits_ = limits; }
  // The batch norm layer (every kind but none and affine).
  const bnorm::BatchNorm<T>* batchnorm() const { return bn_ ? &*bn_ : nullptr; }

 private:
  Norm kind_;
  std::optional<bnorm::BatchNorm<T>> bn_;
  std::vector<T> gamma_, beta_, dgamma_, dbeta_;
  bnorm::RenormLimits limits_{1.0, 0.0};
  // Cached by forward: the input (affine), the batch moments (frozen), r and
  // d (batch renorm).
  Matrix<T> z_;
  std::vector<T> mean_, invstd_, r_, d_;
  bool batch_stats_ = false;
};

template <class T>
class Network {
 public:
  explicit Network(const NetConfig& config);

  // Logits for a batch of inputs (one row each). In training mode the
  // normalization layers use batch statistics and cache what backward needs.
  const Matrix<T>& forward(const Matrix<T>& x);
  // Fills every parameter's gradient from dL/dlogits.
  void backward(const Matrix<T>& dlogits);

  void train(bool on = true) { training_ = on; }
  bool training() const { return training_; }
  std::vector<Param<T>> params();
  // Batch Renormalization's rmax and dmax for the following steps.
  void set_renorm_limits(const bnorm::RenormLimits& limits);

  int hidden_layers() const { return int(hidden_.size()); }
  // Layer l's linear output (the normalization layer's input) and the input
  // to its activation, from the last forward.
  const Matrix<T>& linear_output(int l) const { return hidden_[l].z; }
  const Matrix<T>& pre_activation(int l) const { return hidden_[l].u; }
  const NetConfig& config() const { return config_; }

 private:
  struct Linear {
    Matrix<T> w, dw;  // (out, in)
    RowVector<T> b, db;
    Matrix<T> x;  // input, for backward
  };
  struct Hidden {
    Linear linear;
    NormLayer<T> norm;
    Matrix<T> z, u, a;  // linear output, normalized, activated
  };
  static Matrix<T> linear_forward(Linear& l, const Matrix<T>& x);
  static Matrix<T> linear_backward(Linear& l, const Matrix<T>& dz, bool need_dx);

  NetConfig config_;
  bool training_ = true;
  std::vector<Hidden> hidden_;
  Linear out_;
  Matrix<T> logits_;
};

// Mean softmax cross-entropy over the rows; writes dL/dlogits (already
// divided by the batch size) when dlogits is not null, and the number of rows
// whose largest logit is the label into *correct.
template <class T>
double softmax_cross_entropy(const Matrix<T>& logits, const uint8_t* labels, Matrix<T>* dlogits,
                             int64_t* correct);

// SGD with momentum, PyTorch's form: v = momentum * v + g; p -= lr * v.
template <class T>
class Sgd {
 public:
  Sgd(std::vector<Param<T>> params, double lr, double momentum);
  void step();

 private:
  std::vector<Param<T>> params_;
  std::vector<std::vector<T>> velocity_;
  double lr_, momentum_;
};

// Rows [begin, begin + count) of a split, or the rows listed in index.
Matrix<float> rows(const Split& s, int64_t begin, int64_t count);
Matrix<float> rows(const Split& s, const std::vector<int64_t>& index);

// Accuracy and mean loss of the network on the first `limit` examples of a
// split (all when limit <= 0), in batches of batch_size, in whatever mode the
// network is in. Training mode evaluates with the statistics of each batch
// (and updates running statistics: pass a copy).
struct Score {
  double accuracy = 0, loss = 0;
};
Score evaluate(Network<float>& net, const Split& data, int64_t limit = 0,
               int64_t batch_size = 1000);

// One training run: shuffled mini-batches (seeded), SGD with momentum.
struct RunConfig {
  NetConfig net;
  double lr = 0.1, momentum = 0.9;
  int64_t batch = 60;
  int64_t steps = 1000;
  int64_t train_limit = 0;  // use only the first N training examples (0: all)
  uint64_t seed = 1;
};
// Called after every step with the step number (1-based) and the batch loss;
// return false to stop the run.
using StepHook = std::function<bool(int64_t step, double loss)>;
// Trains `net` in place; returns the number of steps taken (fewer than
// config.steps when the hook stopped it or the loss stopped being finite).
int64_t train(Network<float>& net, const Split& data, const RunConfig& config,
              const StepHook& hook);

}  // namespace bnorm::train
