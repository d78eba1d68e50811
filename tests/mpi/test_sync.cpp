// Synchronized batch norm against one process on the concatenated batch
// (bnorm::forward_training / backward) and against the double-precision
// reference, on 1 to 4 ranks with even, uneven and empty slices.
#include <gtest/gtest.h>

#include <bnorm/mpi.hpp>
#include <cstdio>
#include <functional>
#include <map>

#include "../common.hpp"
#include "mpi_test.hpp"

namespace bnorm::test {
namespace ref = bnorm::reference;

// Samples per rank for a named split of the global batch.
std::vector<int64_t> split(const std::string& name, int ranks) {
  std::vector<int64_t> n(static_cast<size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    if (name == "even") n[size_t(r)] = 3;
    if (name == "uneven") n[size_t(r)] = 2 * r + 2;  // 2, 4, 6, 8: rank 0 smallest
    if (name == "uneven_desc") n[size_t(r)] = 2 * (ranks - r) + 1;
    if (name == "empty_first") n[size_t(r)] = r == 0 ? 0 : r + 1;
    if (name == "empty_last") n[size_t(r)] = r == ranks - 1 ? 0 : 2;
  }
  return n;
}

std::vector<std::string> splits(int ranks) {
  std::vector<std::string> out{"even", "uneven", "uneven_desc"};
  if (ranks > 1) {
    out.push_back("empty_first");
    out.push_back("empty_last");
  }
  return out;
}

template <class T>
std::vector<T> slice(const std::vector<T>& global, int64_t begin, int64_t count, int64_t per) {
  return std::vector<T>(global.begin() + begin * per, global.begin() + (begin + count) * per);
}

// The largest error seen by each test, per element type, printed by rank 0.
struct Worst {
  double vs_single = 0, vs_reference = 0;
};
std::map<std::string, Worst>& worst() {
  static std::map<std::string, Worst> w;
  return w;
}

template <class T>
class Sync : public ::testing::Test {
 protected:
  // One process and the ranks compute the same double statistics up to the
  // rounding of the merge; outputs in T then differ by at most an ulp or so.
  static double tol_single() { return std::is_same_v<T, float> ? 4e-7 : 1e-13; }
  static double tol_reference() { return std::is_same_v<T, float> ? 2e-5 : 1e-12; }
  static const char* type_name() { return std::is_same_v<T, float> ? "float" : "double"; }
};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Sync, Types);

TYPED_TEST(Sync, EveryRankMatchesOneProcessOnTheWholeBatch) {
  using T = TypeParam;
  const int P = size(), me = rank();
  uint64_t seed = 1000;
  // Largest errors over the cases with |mean| ~ std, and over the offset case
  // divided by its condition number.
  double err_single = 0, err_ref = 0, err_single_offset = 0, err_ref_offset = 0;
  struct Case {
    int64_t c, s;
    double mean, std;
  };
  // A 2-D input, an image-like one, a wide one, and a large offset (where
  // merging sums of squares, E[x^2] - E[x]^2, would lose 8 of 16 digits).
  const Case cases[] = {{4, 1, 0.3, 1.5}, {3, 5, -0.7, 2.0}, {67, 2, 0.1, 1.0}, {2, 3, 1e4, 1.0}};
  for (const Case& cs : cases)
    for (Layout layout : {Layout::NCHW, Layout::NHWC})
      for (const std::string& split_name : splits(P))
        for (bool affine : {true, false})
          for (int variant = 0; variant < 2; ++variant) {  // momentum 0.1 / cumulative
            const auto n = split(split_name, P);
            const int64_t n_total = std::accumulate(n.begin(), n.end(), int64_t(0));
            const int64_t offset = std::accumulate(n.begin(), n.begin() + me, int64_t(0));
            const int64_t c = cs.c, s = cs.s, per = c * s;
            const Shape global{n_total, c, s, layout}, local{n[size_t(me)], c, s, layout};
            SCOPED_TRACE(describe(global) + " split " + split_name + (affine ? " affine" : "") +
                         (variant ? " cumulative" : " momentum"));
            const auto x = cast<T>(random_values(size_t(global.numel()), ++seed, cs.mean, cs.std));
            const auto dy = cast<T>(random_values(size_t(global.numel()), ++seed));
            const auto w = cast<T>(random_values(size_t(c), ++seed, 1.0, 0.5));
            const auto b = cast<T>(random_values(size_t(c), ++seed));
            const auto rm0 = cast<T>(random_values(size_t(c), ++seed));
            std::vector<T> rv0(static_cast<size_t>(c));
            for (size_t k = 0; k < size_t(c); ++k) rv0[k] = T(0.5 + 0.1 * double(k));
            Options opt;
            opt.eps = 1e-5;
            if (variant == 1) {
              opt.momentum = std::nullopt;
              opt.num_batches_tracked = 3;
            }
            // Rounding the mean costs any method eps * |mean| / std in x_hat.
            const double cond = 1 + std::fabs(cs.mean) / cs.std;
            const auto note = [&](double e, double& plain, double& offset_case) {
              if (cond > 10)
                offset_case = std::max(offset_case, e / cond);
              else
                plain = std::max(plain, e);
            };
            const T* wp = affine ? w.data() : nullptr;
            const T* bp = affine ? b.data() : nullptr;

            // One process, whole batch.
            std::vector<T> y1(x.size()), mean1(static_cast<size_t>(c)),
                invstd1(static_cast<size_t>(c)), rm1 = rm0, rv1 = rv0, dx1(x.size()),
                                                 dw1(static_cast<size_t>(c)),
                                                 db1(static_cast<size_t>(c));
            forward_training<T>(global, x.data(), wp, bp, y1.data(), mean1.data(), invstd1.data(),
                                rm1.data(), rv1.data(), opt);
            backward<T>(global, dy.data(), x.data(), wp, mean1.data(), invstd1.data(), dx1.data(),
                        dw1.data(), db1.data());

            // This rank's slice, synchronized.
            const auto xl = slice(x, offset, local.n, per), dyl = slice(dy, offset, local.n, per);
            std::vector<T> y(xl.size()), mean(static_cast<size_t>(c)),
                invstd(static_cast<size_t>(c)), rm = rm0, rv = rv0, dx(xl.size()),
                                                dw(static_cast<size_t>(c)),
                                                db(static_cast<size_t>(c));
            mpi::forward_training<T>(MPI_COMM_WORLD, local, xl.data(), wp, bp, y.data(),
                                     mean.data(), invstd.data(), rm.data(), rv.data(), opt);
            mpi::backward<T>(MPI_COMM_WORLD, local, dyl.data(), xl.data(), wp, mean.data(),
                             invstd.data(), dx.data(), dw.data(), db.data());

            const auto check = [&](const char* what, const std::vector<T>& got,
                                   const std::vector<T>& want) {
              if (want.empty()) return;
              const double e = scaled_error(widen<T>(got), widen<T>(want));
              note(e, err_single, err_single_offset);
              EXPECT_LE(e, cond * TestFixture::tol_single()) << what;
            };
            check("y", y, slice(y1, offset, local.n, per));
            check("save_mean", mean, mean1);
            check("save_invstd", invstd, invstd1);
            check("running_mean", rm, rm1);
            check("running_var", rv, rv1);
            check("dweight", dw, dw1);
            check("dbias", db, db1);
            if (!dx.empty()) {
              const double e = dx_error(
                  local, widen<T>(dx), widen<T>(slice(dx1, offset, local.n, per)), widen<T>(dyl),
                  affine ? widen<T>(w) : std::vector<double>{}, widen<T>(invstd1));
              note(e, err_single, err_single_offset);
              EXPECT_LE(e, cond * TestFixture::tol_single()) << "dx";
            }

            // The double-precision reference on the (rounded) whole batch.
            const auto xr = widen<T>(x), dyr = widen<T>(dy);
            const auto wr = affine ? widen<T>(w) : std::vector<double>{};
            const auto br = affine ? widen<T>(b) : std::vector<double>{};
            const auto want = ref::forward_training(global, xr, wr, br, opt.eps);
            const auto grads = ref::backward(ref::Method::compact, global, dyr, xr, wr, opt.eps);
            const auto check_ref = [&](const char* what, const std::vector<T>& got,
                                       const std::vector<double>& full) {
              if (got.empty()) return;
              const double e = scaled_error(widen<T>(got), full);
              note(e, err_ref, err_ref_offset);
              EXPECT_LE(e, cond * TestFixture::tol_reference()) << what << " vs reference";
            };
            check_ref("y", y, slice(want.y, offset, local.n, per));
            check_ref("save_mean", mean, want.mean);
            check_ref("save_invstd", invstd, want.invstd);
            check_ref("dweight", dw, grads.dweight);
            check_ref("dbias", db, grads.dbias);

            // Statistics and parameter gradients: the same bits everywhere.
            EXPECT_TRUE(same_on_all_ranks(mean)) << "save_mean";
            EXPECT_TRUE(same_on_all_ranks(invstd)) << "save_invstd";
            EXPECT_TRUE(same_on_all_ranks(rm)) << "running_mean";
            EXPECT_TRUE(same_on_all_ranks(rv)) << "running_var";
            EXPECT_TRUE(same_on_all_ranks(dw)) << "dweight";
            EXPECT_TRUE(same_on_all_ranks(db)) << "dbias";
          }
  err_single = global_max(err_single);
  err_ref = global_max(err_ref);
  err_single_offset = global_max(err_single_offset);
  err_ref_offset = global_max(err_ref_offset);
  if (me == 0)
    std::printf(
        "[%d ranks, %s] max scaled error vs one process %.3g, vs reference %.3g; "
        "mean 1e4 std 1: (error / 1e4) %.3g, %.3g\n",
        P, TestFixture::type_name(), err_single, err_ref, err_single_offset, err_ref_offset);
}

TYPED_TEST(Sync, LayerMatchesBatchNormOnTheWholeBatch) {
  using T = TypeParam;
  const int P = size(), me = rank();
  const auto n = split(P > 1 ? "empty_first" : "uneven", P);
  const int64_t n_total = std::accumulate(n.begin(), n.end(), int64_t(0));
  const int64_t offset = std::accumulate(n.begin(), n.begin() + me, int64_t(0));
  const int64_t c = 5, s = 3, per = c * s;
  for (std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()}) {
    mpi::SyncBatchNorm<T> sync(MPI_COMM_WORLD, c, 1e-5, momentum);
    BatchNorm<T> one(c, 1e-5, momentum);
    for (size_t k = 0; k < size_t(c); ++k) {
      sync.weight()[k] = one.weight()[k] = T(0.5 + 0.25 * double(k));
      sync.bias()[k] = one.bias()[k] = T(0.1 * double(k));
    }
    for (int step = 0; step < 3; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const Shape global{n_total, c, s, Layout::NHWC}, local{n[size_t(me)], c, s, Layout::NHWC};
      const auto x = cast<T>(random_values(size_t(global.numel()), 77 + uint64_t(step), 2.0, 3.0));
      const auto dy = cast<T>(random_values(size_t(global.numel()), 99 + uint64_t(step)));
      const auto y1 = one.forward(global, x);
      const auto g1 = one.backward(dy);
      const auto xl = slice(x, offset, local.n, per), dyl = slice(dy, offset, local.n, per);
      const auto y = sync.forward(local, xl);
      const auto g = sync.backward(dyl);
      const double tol = TestFixture::tol_single();
      if (!y.empty()) {
        EXPECT_LE(scaled_error(widen<T>(y), widen<T>(slice(y1, offset, local.n, per))), tol);
        EXPECT_LE(scaled_error(widen<T>(g.dx), widen<T>(slice(g1.dx, offset, local.n, per))),
                  10 * tol);
      }
      EXPECT_LE(scaled_error(widen<T>(g.dweight), widen<T>(g1.dweight)), tol);
      EXPECT_LE(scaled_error(widen<T>(g.dbias), widen<T>(g1.dbias)), tol);
      const std::vector<T> rm(sync.running_mean().begin(), sync.running_mean().end()),
          rv(sync.running_var().begin(), sync.running_var().end());
      EXPECT_LE(scaled_error(widen<T>(rm), widen<T>(std::vector<T>(one.running_mean().begin(),
                                                                   one.running_mean().end()))),
                tol);
      EXPECT_LE(scaled_error(widen<T>(rv), widen<T>(std::vector<T>(one.running_var().begin(),
                                                                   one.running_var().end()))),
                tol);
      EXPECT_TRUE(same_on_all_ranks(rm));
      EXPECT_TRUE(same_on_all_ranks(rv));
      EXPECT_TRUE(same_on_all_ranks(g.dweight));
      EXPECT_EQ(sync.num_batches_tracked(), one.num_batches_tracked());
    }
    // Eval mode is rank-local and uses the (identical) running statistics.
    sync.eval();
    one.eval();
    const Shape global{n_total, c, s, Layout::NHWC}, local{n[size_t(me)], c, s, Layout::NHWC};
    const auto x = cast<T>(random_values(size_t(global.numel()), 5, 2.0, 3.0));
    if (local.n > 0) {
      const auto y1 = one.forward(global, x);
      const auto y = sync.forward(local, slice(x, offset, local.n, per));
      EXPECT_LE(scaled_error(widen<T>(y), widen<T>(slice(y1, offset, local.n, per))),
                TestFixture::tol_single());
    }
  }
}

// bfloat16 and float16 activations (float parameters and statistics): the
// synchronized layer against one process on the whole batch. The ranks'
// float statistics differ from one process's by the merge's rounding, so
// y and dx may land one rounding of T (unit_roundoff) apart; the
// statistics, dweight and dbias stay within float's bound and bitwise equal
// on every rank.
template <class T>
class SyncNarrow : public ::testing::Test {};
using NarrowTypes = ::testing::Types<bfloat16, float16>;
TYPED_TEST_SUITE(SyncNarrow, NarrowTypes);

TYPED_TEST(SyncNarrow, LayerMatchesBatchNormOnTheWholeBatch) {
  using T = TypeParam;
  const int P = size(), me = rank();
  const auto n = split(P > 1 ? "empty_first" : "uneven", P);
  const int64_t n_total = std::accumulate(n.begin(), n.end(), int64_t(0));
  const int64_t offset = std::accumulate(n.begin(), n.begin() + me, int64_t(0));
  const int64_t c = 5, s = 3, per = c * s;
  const double u = unit_roundoff<T>(), tol = 4e-7;
  mpi::SyncBatchNorm<T> sync(MPI_COMM_WORLD, c);
  BatchNorm<T> one(c);
  for (size_t k = 0; k < size_t(c); ++k) {
    sync.weight()[k] = one.weight()[k] = 0.5f + 0.25f * float(k);
    sync.bias()[k] = one.bias()[k] = 0.1f * float(k);
  }
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      const Shape global{n_total, c, s, layout}, local{n[size_t(me)], c, s, layout};
      const auto x = cast<T>(random_values(size_t(global.numel()), 77 + uint64_t(step), 2.0, 3.0));
      const auto dy = cast<T>(random_values(size_t(global.numel()), 99 + uint64_t(step)));
      const auto y1 = one.forward(global, x);
      const auto g1 = one.backward(dy);
      const auto xl = slice(x, offset, local.n, per), dyl = slice(dy, offset, local.n, per);
      const auto y = sync.forward(local, xl);
      const auto g = sync.backward(dyl);
      if (!y.empty()) {
        const auto y1l = widen<T>(slice(y1, offset, local.n, per));
        const auto dx1l = widen<T>(slice(g1.dx, offset, local.n, per));
        // One rounding each way: 2u of the value.
        EXPECT_LE(rounding_ratio(widen<T>(y), y1l, 2 * u, tol * max_abs(y1l)), 1.0);
        EXPECT_LE(rounding_ratio(widen<T>(g.dx), dx1l, 2 * u, 10 * tol * max_abs(dx1l)), 1.0);
      }
      // dweight and dbias: sums whose terms are computed from statistics
      // (float save_mean, save_invstd) that the two paths round differently,
      // and summed in a different order: a few float roundings of the sum
      // of the terms' magnitudes, relative to the largest result.
      const auto stats = ref::forward_training(global, widen<T>(x), {}, {}, 1e-5);
      std::vector<double> terms_w(static_cast<size_t>(c)), terms_b(static_cast<size_t>(c));
      for (int64_t i = 0; i < global.numel(); ++i) {
        const size_t k = size_t(layout == Layout::NHWC ? i % c : i / s % c);
        const double g = to_double(dy[size_t(i)]);
        terms_w[k] += std::abs(g * (to_double(x[size_t(i)]) - stats.mean[k]) * stats.invstd[k]);
        terms_b[k] += std::abs(g);
      }
      const double tol_w = 4 * 0x1p-24 * max_abs(terms_w) / max_abs(widen<float>(g1.dweight));
      const double tol_b = 4 * 0x1p-24 * max_abs(terms_b) / max_abs(widen<float>(g1.dbias));
      EXPECT_LE(scaled_error(widen<float>(g.dweight), widen<float>(g1.dweight)), tol_w);
      EXPECT_LE(scaled_error(widen<float>(g.dbias), widen<float>(g1.dbias)), tol_b);
      const std::vector<float> rm(sync.running_mean().begin(), sync.running_mean().end()),
          rv(sync.running_var().begin(), sync.running_var().end());
      EXPECT_LE(scaled_error(widen<float>(rm),
                             widen<float>(std::vector<float>(one.running_mean().begin(),
                                                             one.running_mean().end()))),
                tol);
      EXPECT_LE(
          scaled_error(widen<float>(rv), widen<float>(std::vector<float>(one.running_var().begin(),
                                                                         one.running_var().end()))),
          tol);
      EXPECT_TRUE(same_on_all_ranks(rm));
      EXPECT_TRUE(same_on_all_ranks(rv));
      EXPECT_TRUE(same_on_all_ranks(g.dweight));
      EXPECT_TRUE(same_on_all_ranks(g.dbias));
    }
  }
}

}  // namespace bnorm::test
