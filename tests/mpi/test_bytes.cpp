// What one training step sends, counted through the PMPI interface: a
// 160-byte pre-flight all-reduce, then 24c bytes reduced and broadcast in
// forward and 16c in backward, whatever the batch size.
#include <gtest/gtest.h>

#include <bnorm/mpi.hpp>

#include "../common.hpp"
#include "mpi_test.hpp"
#include "pmpi_count.hpp"

namespace bnorm::test {
namespace {

std::string show(const std::vector<Call>& calls) {
  std::string out;
  for (const Call& c : calls) out += c.name + "(" + std::to_string(c.bytes) + " B) ";
  return out;
}

TEST(SyncBytes, ForwardAndBackwardSendOrderCNumbers) {
  for (int64_t c : {1, 7, 300})
    for (int64_t n : {0, 1, 50}) {  // bytes do not depend on the local batch
      const Shape s{rank() == 0 ? n + 1 : n, c, 4, Layout::NCHW};
      SCOPED_TRACE(describe(s));
      const auto x = random_values(size_t(s.numel()), 11);
      const auto dy = random_values(size_t(s.numel()), 12);
      std::vector<double> y(x.size()), mean(static_cast<size_t>(c)), invstd(static_cast<size_t>(c)),
          rm(size_t(c), 0.0), rv(size_t(c), 1.0), dx(x.size()), dw(static_cast<size_t>(c)),
          db(static_cast<size_t>(c));
      start_counting();
      mpi::forward_training<double>(MPI_COMM_WORLD, s, x.data(), nullptr, nullptr, y.data(),
                                    mean.data(), invstd.data(), rm.data(), rv.data());
      const auto fwd = stop_counting();
      start_counting();
      mpi::backward<double>(MPI_COMM_WORLD, s, dy.data(), x.data(), nullptr, mean.data(),
                            invstd.data(), dx.data(), dw.data(), db.data());
      const auto bwd = stop_counting();
      ASSERT_EQ(fwd.size(), 3u) << show(fwd);
      EXPECT_EQ(fwd[0].name, "MPI_Iallreduce");
      EXPECT_EQ(fwd[0].bytes, 160);
      EXPECT_EQ(fwd[1].name, "MPI_Ireduce");
      EXPECT_EQ(fwd[1].bytes, 24 * c);  // (count, mean, M2) per channel
      EXPECT_EQ(fwd[2].name, "MPI_Ibcast");
      EXPECT_EQ(fwd[2].bytes, 24 * c);
      ASSERT_EQ(bwd.size(), 3u) << show(bwd);
      EXPECT_EQ(bwd[0].name, "MPI_Iallreduce");
      EXPECT_EQ(bwd[0].bytes, 160);
      EXPECT_EQ(bwd[1].name, "MPI_Ireduce");
      EXPECT_EQ(bwd[1].bytes, 16 * c);  // (sum dy, sum dy * x_hat) per channel
      EXPECT_EQ(bwd[2].name, "MPI_Ibcast");
      EXPECT_EQ(bwd[2].bytes, 16 * c);
      if (rank() == 0 && c == 7 && n == 50)
        std::printf("c = %lld: forward %s, backward %s\n", static_cast<long long>(c),
                    show(fwd).c_str(), show(bwd).c_str());
    }
}

}  // namespace
}  // namespace bnorm::test
