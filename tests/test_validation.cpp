// Bad input: a std::invalid_argument that names the argument and the value,
// and not one value written to any output or running statistic.
#include <gtest/gtest.h>

#include <functional>
#include <limits>

#include "common.hpp"

namespace bnorm::test {
namespace {

constexpr float kSentinel = 12345.f;

struct Buffers {
  std::vector<float> x = cast<float>(random_values(60, 1));
  std::vector<float> dy = cast<float>(random_values(60, 2));
  std::vector<float> w = std::vector<float>(3, 1.5f), b = std::vector<float>(3, 0.5f);
  std::vector<float> y = std::vector<float>(60, kSentinel);
  std::vector<float> mean = std::vector<float>(3, kSentinel), invstd = mean, rm = mean, rv = mean;
  std::vector<float> dx = y, dw = mean, db = mean;
  bool untouched() const {
    for (const auto* v : {&y, &mean, &invstd, &rm, &rv, &dx, &dw, &db})
      for (float e : *v)
        if (e != kSentinel) return false;
    return true;
  }
};

// Runs f, expects invalid_argument whose message contains every fragment,
// and checks that nothing was written.
void expect_rejected(const std::function<void(Buffers&)>& f,
                     std::initializer_list<const char*> fragments) {
  Buffers buf;
  try {
    f(buf);
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    for (const char* frag : fragments)
      EXPECT_NE(std::string(e.what()).find(frag), std::string::npos)
          << "message '" << e.what() << "' lacks '" << frag << "'";
  }
  EXPECT_TRUE(buf.untouched());
}

void train(Buffers& b, const Shape& shape, const Options& opt = {}) {
  forward_training<float>(shape, b.x.data(), b.w.data(), b.b.data(), b.y.data(), b.mean.data(),
                          b.invstd.data(), b.rm.data(), b.rv.data(), opt);
}

const Shape kGood{4, 3, 5, Layout::NCHW};

}  // namespace

TEST(Validation, ShapeBelowOne) {
  expect_rejected([](Buffers& b) { train(b, {0, 3, 5, Layout::NCHW}); }, {"shape.n", "0"});
  expect_rejected([](Buffers& b) { train(b, {4, -1, 5, Layout::NCHW}); }, {"shape.c", "-1"});
  expect_rejected([](Buffers& b) { train(b, {4, 3, 0, Layout::NHWC}); }, {"shape.s", "0"});
  expect_rejected([](Buffers& b) { train(b, {4, 3, 5, static_cast<Layout>(7)}); }, {"layout", "7"});
}

TEST(Validation, ShapeOverflow) {
  const int64_t big = int64_t(1) << 40;
  expect_rejected([&](Buffers& b) { train(b, {big, big, 1, Layout::NCHW}); }, {"overflow"});
  expect_rejected(
      [&](Buffers& b) {
        forward_inference<float>({big, 4, big, Layout::NHWC}, b.x.data(), nullptr, nullptr,
                                 b.rm.data(), b.rv.data(), b.y.data());
      },
      {"overflow"});
}

TEST(Validation, SingleValuePerChannelInTraining) {
  expect_rejected(
      [](Buffers& b) {
        train(b, {1, 3, 1, Layout::NCHW});
      },
      {"more than 1 value", "1"});
}

TEST(Validation, Eps) {
  for (double eps : {0.0, -1e-5, std::numeric_limits<double>::infinity(),
                     std::numeric_limits<double>::quiet_NaN()}) {
    Options opt;
    opt.eps = eps;
    expect_rejected([&](Buffers& b) { train(b, kGood, opt); }, {"eps"});
    expect_rejected(
        [&](Buffers& b) {
          forward_inference<float>(kGood, b.x.data(), nullptr, nullptr, b.rm.data(), b.rv.data(),
                                   b.y.data(), eps);
        },
        {"eps"});
  }
}

TEST(Validation, Momentum) {
  for (double mom : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    Options opt;
    opt.momentum = mom;
    expect_rejected([&](Buffers& b) { train(b, kGood, opt); }, {"momentum"});
  }
  Options cumulative;
  cumulative.momentum = std::nullopt;  // and num_batches_tracked left at 0
  expect_rejected([&](Buffers& b) { train(b, kGood, cumulative); }, {"num_batches_tracked", "0"});
}

TEST(Validation, NullPointers) {
  expect_rejected(
      [](Buffers& b) {
        forward_training<float>(kGood, nullptr, nullptr, nullptr, b.y.data(), nullptr, nullptr,
                                nullptr, nullptr);
      },
      {"x must not be null"});
  expect_rejected(
      [](Buffers& b) {
        forward_training<float>(kGood, b.x.data(), nullptr, nullptr, nullptr, b.mean.data(),
                                nullptr, nullptr, nullptr);
      },
      {"y must not be null"});
  expect_rejected(
      [](Buffers& b) {
        forward_training<float>(kGood, b.x.data(), nullptr, nullptr, b.y.data(), nullptr, nullptr,
                                b.rm.data(), nullptr);
      },
      {"running_var"});
  expect_rejected(
      [](Buffers& b) {
        forward_inference<float>(kGood, b.x.data(), nullptr, nullptr, nullptr, b.rv.data(),
                                 b.y.data());
      },
      {"running_mean must not be null"});
  expect_rejected(
      [](Buffers& b) {
        backward<float>(kGood, b.dy.data(), b.x.data(), nullptr, nullptr, b.invstd.data(),
                        b.dx.data(), b.dw.data(), b.db.data());
      },
      {"save_mean must not be null"});
  expect_rejected(
      [](Buffers& b) {
        backward<float>(kGood, nullptr, b.x.data(), nullptr, b.mean.data(), b.invstd.data(),
                        b.dx.data(), b.dw.data(), b.db.data());
      },
      {"dy must not be null"});
}

TEST(Validation, LayerRejectsWrongInputAndKeepsState) {
  BatchNorm<float> layer(3);
  const auto x = cast<float>(random_values(60, 3));
  EXPECT_THROW(BatchNorm<float>(0), std::invalid_argument);
  EXPECT_THROW(BatchNorm<float>(3, -1.0), std::invalid_argument);
  EXPECT_THROW(BatchNorm<float>(3, 1e-5, 2.0), std::invalid_argument);
  EXPECT_THROW(layer.forward({4, 4, 5, Layout::NCHW}, std::span<const float>(x.data(), 80)),
               std::invalid_argument);
  EXPECT_THROW(layer.forward({4, 3, 6, Layout::NCHW}, x), std::invalid_argument);
  EXPECT_THROW(layer.forward({1, 3, 1, Layout::NCHW}, std::span<const float>(x.data(), 3)),
               std::invalid_argument);
  EXPECT_THROW((void)layer.backward(x), std::invalid_argument);  // before any forward
  EXPECT_EQ(layer.num_batches_tracked(), 0);
  for (float v : layer.running_mean()) EXPECT_EQ(v, 0.f);
  for (float v : layer.running_var()) EXPECT_EQ(v, 1.f);
}

}  // namespace bnorm::test
