// Several application threads calling the kernels at once, each on its own
// tensors and each call running its own OpenMP team: every result must be
// bitwise what the same call gives when it runs alone. The tsan preset runs
// this suite under ThreadSanitizer (with LLVM's OpenMP runtime).
#include <gtest/gtest.h>

#include <bnorm/bnorm.hpp>
#include <cstring>
#include <thread>
#include <vector>

#include "common.hpp"

namespace bnorm::test {
namespace {

struct Step {
  std::vector<float> y, mean, invstd, rm, rv, dx, dw, db, yi;
};

// One training step and one inference pass on the job's own data.
Step run_step(const Shape& shape, uint64_t seed) {
  const auto x = cast<float>(random_values(size_t(shape.numel()), seed, 0.5, 2.0));
  const auto dy = cast<float>(random_values(size_t(shape.numel()), seed + 1));
  const auto w = cast<float>(random_values(size_t(shape.c), seed + 2, 1.0, 0.2));
  const auto b = cast<float>(random_values(size_t(shape.c), seed + 3));
  const size_t c = size_t(shape.c);
  Step s{std::vector<float>(x.size()), std::vector<float>(c),      std::vector<float>(c),
         std::vector<float>(c, 0.f),   std::vector<float>(c, 1.f), std::vector<float>(x.size()),
         std::vector<float>(c),        std::vector<float>(c),      std::vector<float>(x.size())};
  forward_training<float>(shape, x.data(), w.data(), b.data(), s.y.data(), s.mean.data(),
                          s.invstd.data(), s.rm.data(), s.rv.data());
  backward<float>(shape, dy.data(), x.data(), w.data(), s.mean.data(), s.invstd.data(), s.dx.data(),
                  s.dw.data(), s.db.data());
  forward_inference<float>(shape, x.data(), w.data(), b.data(), s.rm.data(), s.rv.data(),
                           s.yi.data());
  return s;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Threads, ConcurrentCallsMatchLoneCalls) {
  // Shapes that take the different kernel paths: short and long NCHW
  // channels, NHWC rows, a 2-D input.
  const std::vector<Shape> shapes = {{4, 3, 33, Layout::NCHW},   {2, 5, 3000, Layout::NCHW},
                                     {8, 19, 40, Layout::NHWC},  {700, 6, 1, Layout::NCHW},
                                     {3, 64, 300, Layout::NHWC}, {2, 2, 9000, Layout::NHWC}};
  set_num_threads(2);
  std::vector<Step> alone;
  for (size_t j = 0; j < shapes.size(); ++j) alone.push_back(run_step(shapes[j], 100 + j));

  constexpr int kRounds = 3;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Step> together(shapes.size());
    std::vector<std::thread> threads;
    for (size_t j = 0; j < shapes.size(); ++j)
      threads.emplace_back([&, j] { together[j] = run_step(shapes[j], 100 + j); });
    for (auto& t : threads) t.join();
    for (size_t j = 0; j < shapes.size(); ++j) {
      const Step& a = alone[j];
      const Step& t = together[j];
      SCOPED_TRACE(describe(shapes[j]) + ", round " + std::to_string(round));
      EXPECT_TRUE(same_bits(a.y, t.y));
      EXPECT_TRUE(same_bits(a.mean, t.mean));
      EXPECT_TRUE(same_bits(a.invstd, t.invstd));
      EXPECT_TRUE(same_bits(a.rm, t.rm));
      EXPECT_TRUE(same_bits(a.rv, t.rv));
      EXPECT_TRUE(same_bits(a.dx, t.dx));
      EXPECT_TRUE(same_bits(a.dw, t.dw));
      EXPECT_TRUE(same_bits(a.db, t.db));
      EXPECT_TRUE(same_bits(a.yi, t.yi));
    }
  }
  set_num_threads(0);
}

// Layer objects in several threads: one layer per thread, as a data loader
// feeding independent models would.
TEST(Threads, LayersInSeveralThreads) {
  const Shape shape{6, 7, 50, Layout::NCHW};
  const auto run = [&](uint64_t seed) {
    BatchNorm<float> bn(shape.c);
    std::vector<float> out;
    for (int step = 0; step < 3; ++step) {
      const auto x = cast<float>(random_values(size_t(shape.numel()), seed + step));
      out = bn.forward(shape, x);
      const auto g = bn.backward(out);
      out.insert(out.end(), g.dx.begin(), g.dx.end());
    }
    out.insert(out.end(), bn.running_var().begin(), bn.running_var().end());
    return out;
  };
  std::vector<std::vector<float>> alone, together(4);
  for (uint64_t j = 0; j < 4; ++j) alone.push_back(run(10 * j));
  std::vector<std::thread> threads;
  for (uint64_t j = 0; j < 4; ++j) threads.emplace_back([&, j] { together[j] = run(10 * j); });
  for (auto& t : threads) t.join();
  for (size_t j = 0; j < 4; ++j) EXPECT_TRUE(same_bits(alone[j], together[j])) << "layer " << j;
}

}  // namespace
}  // namespace bnorm::test
