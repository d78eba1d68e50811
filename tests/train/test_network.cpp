// The training stack: whole-network gradients against central finite
// differences in double, and a short training run on real data.
#include <gtest/gtest.h>

#include <cmath>
#include <network.hpp>
#include <string>
#include <vector>

namespace bnorm::train {
namespace {

struct Tiny {
  Network<double> net;
  Matrix<double> x;
  std::vector<uint8_t> labels;
};

// linear (6 -> 5), normalization, activation, linear (5 -> 4), cross-entropy;
// 8 examples; parameters moved off their initial values so that gamma != 1.
Tiny tiny(Norm norm, Activation act, int64_t virtual_batch_size = 0) {
  NetConfig cfg;
  cfg.sizes = {6, 5, 4};
  cfg.norm = norm;
  cfg.virtual_batch_size = virtual_batch_size;
  cfg.activation = act;
  cfg.init_std = 0.7;
  cfg.seed = 3;
  Tiny t{Network<double>(cfg), Matrix<double>(8, 6), {0, 1, 2, 3, 3, 2, 1, 0}};
  Rng rng(17);
  for (Eigen::Index i = 0; i < t.x.size(); ++i) t.x.data()[i] = rng.normal();
  for (auto& p : t.net.params())
    for (int64_t i = 0; i < p.size; ++i) p.value[i] += 0.4 * rng.normal();
  return t;
}

double loss(Tiny& t) {
  return softmax_cross_entropy<double>(t.net.forward(t.x), t.labels.data(), nullptr, nullptr);
}

// Analytic gradients of every parameter, and their central differences.
void gradients(Tiny& t, std::vector<double>& analytic, std::vector<double>& numeric) {
  Matrix<double> dlogits;
  softmax_cross_entropy<double>(t.net.forward(t.x), t.labels.data(), &dlogits, nullptr);
  t.net.backward(dlogits);
  analytic.clear();
  numeric.clear();
  for (auto& p : t.net.params()) {
    analytic.insert(analytic.end(), p.grad, p.grad + p.size);
    for (int64_t i = 0; i < p.size; ++i) {
      const double keep = p.value[i], h = 1e-6;
      p.value[i] = keep + h;
      const double up = loss(t);
      p.value[i] = keep - h;
      const double down = loss(t);
      p.value[i] = keep;
      numeric.push_back((up - down) / (2 * h));
    }
  }
}

double scaled_error(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / den;
}

class WholeNetwork : public ::testing::TestWithParam<std::tuple<Norm, Activation>> {};

TEST_P(WholeNetwork, GradientsMatchFiniteDifferences) {
  auto [norm, act] = GetParam();
  Tiny t = tiny(norm, act);
  std::vector<double> analytic, numeric;
  gradients(t, analytic, numeric);
  ASSERT_EQ(analytic.size(), numeric.size());
  EXPECT_LT(scaled_error(analytic, numeric), 1e-7);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, WholeNetwork,
    ::testing::Combine(::testing::Values(Norm::batchnorm, Norm::affine, Norm::none),
                       ::testing::Values(Activation::sigmoid, Activation::relu)),
    [](const auto& info) {
      std::string n = to_string(std::get<0>(info.param));
      for (char& c : n)
        if (c == ' ') c = '_';
      return n + "_" + to_string(std::get<1>(info.param));
    });

// Ghost batch norm (two groups of 4 examples) is a function of the batch like
// batch norm: its backward is the gradient of the whole network too.
TEST(GhostNetwork, GradientsMatchFiniteDifferences) {
  Tiny t = tiny(Norm::ghost, Activation::sigmoid, 4);
  std::vector<double> analytic, numeric;
  gradients(t, analytic, numeric);
  EXPECT_LT(scaled_error(analytic, numeric), 1e-7);
  // And it is not batch norm over the 8 examples.
  Tiny whole = tiny(Norm::batchnorm, Activation::sigmoid);
  EXPECT_GT(std::abs(loss(t) - loss(whole)), 1e-3);
}

// Batch Renormalization with rmax = 1, dmax = 0 trains exactly as batch norm.
TEST(BatchRenormNetwork, RmaxOneDmaxZeroIsBatchNorm) {
  Tiny a = tiny(Norm::batch_renorm, Activation::relu), b = tiny(Norm::batchnorm, Activation::relu);
  a.net.set_renorm_limits({1.0, 0.0});
  std::vector<double> ga, gb, na, nb;
  for (int step = 0; step < 3; ++step) {
    EXPECT_EQ(loss(a), loss(b));
    Matrix<double> da, db;
    softmax_cross_entropy<double>(a.net.forward(a.x), a.labels.data(), &da, nullptr);
    softmax_cross_entropy<double>(b.net.forward(b.x), b.labels.data(), &db, nullptr);
    a.net.backward(da);
    b.net.backward(db);
    auto pa = a.net.params(), pb = b.net.params();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t k = 0; k < pa.size(); ++k)
      for (int64_t i = 0; i < pa[k].size; ++i) {
        ASSERT_EQ(pa[k].grad[i], pb[k].grad[i]);
        pa[k].value[i] -= 0.1 * pa[k].grad[i];
        pb[k].value[i] -= 0.1 * pb[k].grad[i];
      }
  }
  a.net.train(false);
  b.net.train(false);
  EXPECT_EQ(loss(a), loss(b));  // the same running statistics
}

// The frozen-moments backward is not the gradient of the network it trains:
// the bias before a batch-norm layer has no effect on the loss (its true
// gradient is zero), yet the frozen backward gives it one.
TEST(FrozenMoments, IsNotTheGradient) {
  Tiny t = tiny(Norm::frozen_moments, Activation::sigmoid);
  std::vector<double> analytic, numeric;
  gradients(t, analytic, numeric);
  EXPECT_GT(scaled_error(analytic, numeric), 1e-2);
  // params(): w1 (30 values), b1 (5), gamma, beta, w2, b2.
  double bias_fd = 0, bias_frozen = 0;
  for (size_t i = 30; i < 35; ++i) {
    bias_fd = std::max(bias_fd, std::abs(numeric[i]));
    bias_frozen = std::max(bias_frozen, std::abs(analytic[i]));
  }
  EXPECT_LT(bias_fd, 1e-8);
  EXPECT_GT(bias_frozen, 1e-3);
}

TEST(Training, LossFallsAndAccuracyBeatsChance) {
  const char* dir = "/usr/share/datasets/fashion-mnist";
  const Split train_set = load_fashion_mnist(dir, "train");
  const Split test = load_fashion_mnist(dir, "t10k");
  NetConfig nc;
  nc.sizes = {784, 64, 10};
  nc.activation = Activation::relu;
  nc.norm = Norm::batchnorm;
  nc.seed = 7;
  Network<float> net(nc);
  RunConfig rc;
  rc.net = nc;
  rc.lr = 0.05;
  rc.steps = 250;
  rc.train_limit = 3000;
  rc.seed = 8;
  std::vector<double> losses;
  const int64_t done = train(net, train_set, rc, [&](int64_t, double l) {
    losses.push_back(l);
    return true;
  });
  ASSERT_EQ(done, rc.steps);
  auto mean = [&](size_t from, size_t to) {
    double s = 0;
    for (size_t i = from; i < to; ++i) s += losses[i];
    return s / double(to - from);
  };
  const double first = mean(0, 3), last = mean(losses.size() - 25, losses.size());
  EXPECT_GT(first, 1.8);  // about log(10) = 2.30 at the start
  EXPECT_LT(last, 0.5 * first);
  net.train(false);
  const auto score = evaluate(net, test, 1000);
  EXPECT_GT(score.accuracy, 0.65);  // chance is 0.10
}

}  // namespace
}  // namespace bnorm::train
