// Ranks that disagree, or one rank with a bad argument: every rank throws
// the same std::invalid_argument, nothing is written, and the communicator
// stays usable (a later call succeeds). A hang fails through ctest's TIMEOUT.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bnorm/mpi.hpp>

#include "../common.hpp"
#include "mpi_test.hpp"

namespace bnorm::test {
namespace {

using ::testing::HasSubstr;

constexpr double kSentinel = -12345.0;

// Every rank got an error containing `expected`, the same text everywhere.
void expect_same_error(const std::string& error, const std::string& expected) {
  EXPECT_THAT(error, HasSubstr(expected));
  bool same = false;
  const std::string root = same_string_on_all_ranks(error, &same);
  EXPECT_TRUE(same) << "rank " << rank() << " got \"" << error << "\", rank 0 \"" << root << "\"";
}

// A valid synchronized step: proves no collective was left half done.
void expect_usable() {
  const Shape local{2, 3, 2, Layout::NCHW};
  const auto x = random_values(size_t(local.numel()), 7);
  std::vector<double> y(x.size()), mean(3), invstd(3);
  EXPECT_NO_THROW(mpi::forward_training<double>(MPI_COMM_WORLD, local, x.data(), nullptr, nullptr,
                                                y.data(), mean.data(), invstd.data(), nullptr,
                                                nullptr));
  EXPECT_TRUE(same_on_all_ranks(mean));
}

struct Buffers {
  std::vector<double> x, y, mean, invstd, rm, rv;
  explicit Buffers(const Shape& s)
      : x(random_values(size_t(s.numel()), 3)),
        y(size_t(s.numel()), kSentinel),
        mean(size_t(s.c), kSentinel),
        invstd(size_t(s.c), kSentinel),
        rm(size_t(s.c), kSentinel),
        rv(size_t(s.c), kSentinel) {}
  bool untouched() const {
    for (const auto* v : {&y, &mean, &invstd, &rm, &rv})
      for (double e : *v)
        if (e != kSentinel) return false;
    return true;
  }
  std::string forward(const Shape& s, const Options& opt = {}) {
    return error_of([&] {
      mpi::forward_training<double>(MPI_COMM_WORLD, s, x.data(), nullptr, nullptr, y.data(),
                                    mean.data(), invstd.data(), rm.data(), rv.data(), opt);
    });
  }
};

#define REQUIRE_RANKS(k) \
  if (size() < (k)) GTEST_SKIP() << "needs " << (k) << " ranks"

TEST(SyncErrors, MismatchedChannels) {
  REQUIRE_RANKS(2);
  const Shape s{2, rank() == 1 ? 5 : 4, 3, Layout::NCHW};
  Buffers buf(s);
  expect_same_error(buf.forward(s),
                    "bnorm::mpi::forward_training: ranks disagree on shape.c: 4 on some ranks, 5 "
                    "on others");
  EXPECT_TRUE(buf.untouched());
  std::vector<double> dx(buf.x.size(), kSentinel), dw(size_t(s.c), kSentinel);
  const std::vector<double> ones(size_t(s.c), 1.0);
  expect_same_error(error_of([&] {
                      mpi::backward<double>(MPI_COMM_WORLD, s, buf.x.data(), buf.x.data(), nullptr,
                                            ones.data(), ones.data(), dx.data(), dw.data(),
                                            nullptr);
                    }),
                    "bnorm::mpi::backward: ranks disagree on shape.c: 4 on some ranks, 5 on "
                    "others");
  for (double e : dx) EXPECT_EQ(e, kSentinel);
  expect_usable();
}

TEST(SyncErrors, MismatchedLayout) {
  REQUIRE_RANKS(2);
  const Shape s{2, 4, 3, rank() == size() - 1 ? Layout::NHWC : Layout::NCHW};
  Buffers buf(s);
  expect_same_error(buf.forward(s),
                    "ranks disagree on shape.layout: NCHW on some ranks, NHWC on others");
  EXPECT_TRUE(buf.untouched());
  expect_usable();
}

TEST(SyncErrors, MismatchedElementTypeAndEps) {
  REQUIRE_RANKS(2);
  const Shape s{2, 4, 3, Layout::NCHW};
  std::string error;
  if (rank() == 0) {
    std::vector<float> x(size_t(s.numel()), 1.0f), y(x.size(), float(kSentinel));
    error = error_of([&] {
      mpi::forward_training<float>(MPI_COMM_WORLD, s, x.data(), nullptr, nullptr, y.data(), nullptr,
                                   nullptr, nullptr, nullptr);
    });
    for (float e : y) EXPECT_EQ(e, float(kSentinel));
  } else {
    Buffers buf(s);
    error = buf.forward(s);
    EXPECT_TRUE(buf.untouched());
  }
  expect_same_error(error,
                    "ranks disagree on the element type: float32 on some ranks, float64 on "
                    "others");
  Buffers buf(s);
  Options opt;
  opt.eps = rank() == 1 ? 1e-3 : 1e-5;
  expect_same_error(buf.forward(s, opt), "ranks disagree on options.eps");
  EXPECT_TRUE(buf.untouched());
  expect_usable();
}

TEST(SyncErrors, OneRanksBadArgumentReachesEveryRank) {
  REQUIRE_RANKS(2);
  const int bad = size() - 1;
  const Shape s{2, 4, 3, Layout::NCHW};
  Buffers buf(s);
  std::string error = error_of([&] {
    mpi::forward_training<double>(MPI_COMM_WORLD, s, rank() == bad ? nullptr : buf.x.data(),
                                  nullptr, nullptr, buf.y.data(), buf.mean.data(),
                                  buf.invstd.data(), nullptr, nullptr);
  });
  expect_same_error(error, "bnorm::mpi::forward_training: x must not be null [on rank " +
                               std::to_string(bad) + " of " + std::to_string(size()) + "]");
  EXPECT_TRUE(buf.untouched());
  // The layer: one rank's input does not fit its features.
  mpi::SyncBatchNorm<double> layer(MPI_COMM_WORLD, 4);
  const Shape ls{2, rank() == bad ? 3 : 4, 3, Layout::NCHW};
  const std::vector<double> x(size_t(ls.numel()), 1.0);
  expect_same_error(error_of([&] { layer.forward(ls, x); }),
                    "bnorm::mpi::SyncBatchNorm::forward: shape.c is 3 but the layer has 4 "
                    "features [on rank " +
                        std::to_string(bad));
  EXPECT_EQ(layer.num_batches_tracked(), 0);
  expect_usable();
}

TEST(SyncErrors, GlobalBatchOfOneValue) {
  // One value per channel over all ranks: rank 0 holds it, the others none.
  const Shape s{rank() == 0 ? 1 : 0, 4, 1, Layout::NHWC};
  Buffers buf(s);
  expect_same_error(buf.forward(s),
                    "bnorm::mpi::forward_training: expected more than 1 value per channel in "
                    "training over all ranks, got a global n*s = 1");
  EXPECT_TRUE(buf.untouched());
  const Shape none{0, 4, 1, Layout::NHWC};
  Buffers empty(none);
  expect_same_error(empty.forward(none), "got a global n*s = 0");
  EXPECT_TRUE(empty.untouched());
  expect_usable();
}

// Eval mode with running statistics is rank-local: a bad slice fails on its
// own rank at once, naming the layer, and the others are not involved; a
// slice without samples is allowed.
TEST(SyncErrors, EvalModeChecksTheSliceLocally) {
  mpi::SyncBatchNorm<double> layer(MPI_COMM_WORLD, 3);
  layer.eval();
  const Shape empty{0, 3, 2, Layout::NCHW};
  EXPECT_TRUE(layer.forward(empty, {}).empty());
  EXPECT_TRUE(layer.backward({}).dx.empty());
  if (rank() == 0) {
    const std::vector<double> x(6, 1.0);
    for (const Shape& bad : {Shape{1, 3, 0, Layout::NCHW}, Shape{-1, 3, 2, Layout::NCHW}}) {
      const std::string error = error_of([&] { layer.forward(bad, x); });
      EXPECT_THAT(error, HasSubstr("bnorm::mpi::SyncBatchNorm::forward: shape."));
      EXPECT_THAT(error,
                  HasSubstr(bad.s == 0 ? "s must be >= 1, got 0" : "n must be >= 0, got -1"));
    }
  }
  EXPECT_EQ(layer.num_batches_tracked(), 0);
  expect_usable();
}

}  // namespace
}  // namespace bnorm::test

namespace bnorm::test {
namespace {

// The timeout must be positive; a valid one is what timeout() returns (the
// expiry itself is tested by bnorm_mpi_timeout under mpirun).
TEST(SyncErrors, TimeoutMustBePositive) {
  const auto before = mpi::timeout();
  EXPECT_THROW(mpi::set_timeout(std::chrono::milliseconds(0)), std::invalid_argument);
  EXPECT_THROW(mpi::set_timeout(std::chrono::milliseconds(-5)), std::invalid_argument);
  EXPECT_EQ(mpi::timeout(), before);
  mpi::set_timeout(std::chrono::milliseconds(123456));
  EXPECT_EQ(mpi::timeout(), std::chrono::milliseconds(123456));
  mpi::set_timeout(before);
  expect_usable();
}

}  // namespace
}  // namespace bnorm::test
