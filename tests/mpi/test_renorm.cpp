// Batch Renormalization and the running-variance convention over MPI: every
// rank against the double-precision reference on the concatenated batch
// (global statistics), and the ranks' agreement on rmax, dmax and the
// convention.
#include <gtest/gtest.h>

#include <bnorm/mpi.hpp>

#include "../common.hpp"
#include "mpi_test.hpp"

namespace bnorm::test {
namespace ref = bnorm::reference;
namespace {

template <class T>
std::vector<T> samples(const std::vector<T>& global, int64_t begin, int64_t count, int64_t per) {
  return std::vector<T>(global.begin() + begin * per, global.begin() + (begin + count) * per);
}

}  // namespace

template <class T>
class SyncRenorm : public ::testing::Test {
 protected:
  static double tol() { return std::is_same_v<T, float> ? 2e-5 : 1e-12; }
};
using RenormTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SyncRenorm, RenormTypes);

TYPED_TEST(SyncRenorm, MatchesReferenceOnTheWholeBatch) {
  using T = TypeParam;
  const int P = size(), me = rank();
  for (Layout layout : {Layout::NCHW, Layout::NHWC})
    for (bool unbiased : {true, false})
      for (bool clipped : {false, true}) {
        // Rank r holds r + 1 samples.
        const int64_t c = 3, s = 4, per = c * s;
        const int64_t n_total = int64_t(P) * (P + 1) / 2, offset = int64_t(me) * (me + 1) / 2;
        const Shape global{n_total + 1, c, s, layout},
            local{me + 1 + (me == 0 ? 1 : 0), c, s, layout};
        const int64_t begin = me == 0 ? 0 : offset + 1;
        SCOPED_TRACE(describe(global) + (unbiased ? " unbiased" : " biased") +
                     (clipped ? " clipped" : ""));
        const auto xg = cast<T>(random_values(size_t(global.numel()), 77, 0.4, 1.7));
        const auto dyg = cast<T>(random_values(size_t(global.numel()), 78));
        const auto w = cast<T>(random_values(size_t(c), 79, 1.0, 0.5));
        const auto b = cast<T>(random_values(size_t(c), 80));
        // Running statistics inside the limits, or far outside (clipped).
        const std::vector<T> rm0{T(clipped ? 9 : 0.5), T(0.3), T(clipped ? -9 : 0.1)};
        const std::vector<T> rv0{T(clipped ? 100 : 2.5), T(clipped ? 0.01 : 3.0), T(2.0)};
        const auto xl = samples(xg, begin, local.n, per), dyl = samples(dyg, begin, local.n, per);
        std::vector<T> y(xl.size()), mean(3), invstd(3), r(3), d(3), rm = rm0, rv = rv0;
        Options opt;
        opt.momentum = 0.05;
        opt.unbiased_running_var = unbiased;
        mpi::batch_renorm_forward_training<T>(MPI_COMM_WORLD, local, xl.data(), w.data(), b.data(),
                                              y.data(), mean.data(), invstd.data(), r.data(),
                                              d.data(), rm.data(), rv.data(), {3.0, 5.0}, opt);
        const auto want = ref::batch_renorm_forward_training(
            global, widen<T>(xg), widen<T>(w), widen<T>(b), widen<T>(rm0), widen<T>(rv0), 3.0, 5.0,
            0.05, 1e-5, unbiased);
        const Shape local_ref{local.n, c, s, layout};
        EXPECT_LT(scaled_error(widen<T>(y), samples(want.y, begin, local.n, per)), 4 * this->tol());
        EXPECT_LT(scaled_error(widen<T>(r), want.r), this->tol());
        EXPECT_LT(scaled_error(widen<T>(d), want.d), this->tol());
        EXPECT_LT(scaled_error(widen<T>(rm), want.running_mean), this->tol());
        EXPECT_LT(scaled_error(widen<T>(rv), want.running_var), this->tol());
        EXPECT_TRUE(same_on_all_ranks(r));
        EXPECT_TRUE(same_on_all_ranks(d));
        EXPECT_TRUE(same_on_all_ranks(rv));
        // Batch norm's synchronized update follows the same convention.
        std::vector<T> ybn(xl.size()), rm_bn = rm0, rv_bn = rv0;
        mpi::forward_training<T>(MPI_COMM_WORLD, local, xl.data(), nullptr, nullptr, ybn.data(),
                                 nullptr, nullptr, rm_bn.data(), rv_bn.data(), opt);
        EXPECT_LT(scaled_error(widen<T>(rv_bn), want.running_var), this->tol());
        std::vector<T> dx(xl.size()), dw(3), db(3);
        mpi::batch_renorm_backward<T>(MPI_COMM_WORLD, local, dyl.data(), xl.data(), w.data(),
                                      mean.data(), invstd.data(), r.data(), d.data(), dx.data(),
                                      dw.data(), db.data());
        const auto g = ref::batch_renorm_backward(global, widen<T>(dyg), widen<T>(xg), widen<T>(w),
                                                  widen<T>(r), widen<T>(d), 1e-5);
        std::vector<double> wr(3);
        for (size_t k = 0; k < 3; ++k) wr[k] = double(w[k]) * double(r[k]);
        EXPECT_LT(dx_error(local_ref, widen<T>(dx), samples(g.dx, begin, local.n, per),
                           widen<T>(dyl), wr, want.invstd),
                  10 * this->tol());
        EXPECT_LT(scaled_error(widen<T>(dw), g.dweight), 10 * this->tol());
        EXPECT_LT(scaled_error(widen<T>(db), g.dbias), 10 * this->tol());
      }
}

TEST(SyncRenormErrors, RanksMustAgreeOnLimitsAndConvention) {
  const int P = size(), me = rank();
  if (P < 2) GTEST_SKIP() << "needs 2 ranks";
  const Shape local{2, 2, 1, Layout::NCHW};
  const auto x = random_values(4, 5);
  std::vector<double> y(4, 9.0), rm(2, 0.0), rv(2, 1.0), r(2, 9.0), d(2, 9.0);
  const RenormLimits limits{me == P - 1 ? 2.0 : 3.0, 5.0};
  try {
    mpi::batch_renorm_forward_training<double>(MPI_COMM_WORLD, local, x.data(), nullptr, nullptr,
                                               y.data(), nullptr, nullptr, r.data(), d.data(),
                                               rm.data(), rv.data(), limits);
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("ranks disagree on Batch Renormalization's rmax"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(y, std::vector<double>(4, 9.0));
  EXPECT_EQ(rm, std::vector<double>(2, 0.0));
  Options opt;
  opt.unbiased_running_var = me != 0;
  try {
    mpi::forward_training<double>(MPI_COMM_WORLD, local, x.data(), nullptr, nullptr, y.data(),
                                  nullptr, nullptr, rm.data(), rv.data(), opt);
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("options.unbiased_running_var"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(rv, std::vector<double>(2, 1.0));
  // A bad limit on one rank: that rank's message on every rank.
  try {
    mpi::batch_renorm_forward_training<double>(MPI_COMM_WORLD, local, x.data(), nullptr, nullptr,
                                               y.data(), nullptr, nullptr, r.data(), d.data(),
                                               rm.data(), rv.data(), {3.0, me == 1 ? -1.0 : 5.0});
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("dmax must be finite and >= 0"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(r, std::vector<double>(2, 9.0));
}

}  // namespace bnorm::test
