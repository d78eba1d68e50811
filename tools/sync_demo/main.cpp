// bnorm-sync-demo: run with `mpirun -np P bnorm-sync-demo`. The ranks split
// one batch between them; each prints how far its synchronized statistics
// and gradients are from one process on the whole batch (rounding only), and
// how far the statistics of its own slice alone are (sampling noise, what
// unsynchronized batch norm would normalize with).
#include <mpi.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/mpi.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

double max_abs_diff(const std::vector<float>& a, const float* b) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(double(a[i]) - double(b[i])));
  return e;
}

double max_abs(const std::vector<float>& a) {
  double e = 0;
  for (float v : a) e = std::max(e, std::fabs(double(v)));
  return e;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  // One global batch, the same on every rank (same seed): 16 samples of
  // 4 channels x 8 positions, channel k drawn around mean k with spread 1 + k.
  const int64_t n_total = 16, c = 4, s = 8;
  const bnorm::Shape global{n_total, c, s, bnorm::Layout::NCHW};
  std::mt19937_64 rng(2015);
  std::normal_distribution<double> normal;
  std::vector<float> x(size_t(global.numel())), dy(x.size());
  for (int64_t i = 0; i < n_total; ++i)
    for (int64_t k = 0; k < c; ++k)
      for (int64_t j = 0; j < s; ++j)
        x[size_t((i * c + k) * s + j)] = float(double(k) + (1.0 + double(k)) * normal(rng));
  for (float& g : dy) g = float(normal(rng));
  const std::vector<float> weight{1.0f, 0.5f, 2.0f, 1.5f}, bias{0.0f, 0.1f, -0.2f, 0.3f};

  // Samples [first, first + n) go to this rank; the first ranks take one
  // more when the batch does not split evenly.
  const int64_t base = n_total / size, extra = n_total % size;
  const int64_t n = base + (rank < extra ? 1 : 0);
  const int64_t first = rank * base + std::min<int64_t>(rank, extra);
  const bnorm::Shape local{n, c, s, bnorm::Layout::NCHW};
  const size_t per = size_t(c * s), off = size_t(first) * per, cnt = size_t(n) * per;
  const std::vector<float> xl(x.begin() + long(off), x.begin() + long(off + cnt)),
      dyl(dy.begin() + long(off), dy.begin() + long(off + cnt));

  // Synchronized over all ranks.
  std::vector<float> y(cnt), mean(static_cast<size_t>(c)), invstd(static_cast<size_t>(c)),
      rm(size_t(c), 0.0f), rv(size_t(c), 1.0f), dx(cnt), dw(static_cast<size_t>(c)),
      db(static_cast<size_t>(c));
  bnorm::mpi::forward_training(MPI_COMM_WORLD, local, xl.data(), weight.data(), bias.data(),
                               y.data(), mean.data(), invstd.data(), rm.data(), rv.data());
  bnorm::mpi::backward(MPI_COMM_WORLD, local, dyl.data(), xl.data(), weight.data(), mean.data(),
                       invstd.data(), dx.data(), dw.data(), db.data());

  // One process on the whole batch.
  std::vector<float> y1(x.size()), mean1(static_cast<size_t>(c)), invstd1(static_cast<size_t>(c)),
      rm1(size_t(c), 0.0f), rv1(size_t(c), 1.0f), dx1(x.size()), dw1(static_cast<size_t>(c)),
      db1(static_cast<size_t>(c));
  bnorm::forward_training(global, x.data(), weight.data(), bias.data(), y1.data(), mean1.data(),
                          invstd1.data(), rm1.data(), rv1.data());
  bnorm::backward(global, dy.data(), x.data(), weight.data(), mean1.data(), invstd1.data(),
                  dx1.data(), dw1.data(), db1.data());

  // This rank's slice alone (unsynchronized), when it has more than 1 value.
  std::vector<float> y0(cnt), mean0(static_cast<size_t>(c)), invstd0(static_cast<size_t>(c));
  double unsync_mean = NAN, unsync_invstd = NAN, unsync_y = NAN;
  if (local.m() > 1) {
    bnorm::forward_training<float>(local, xl.data(), weight.data(), bias.data(), y0.data(),
                                   mean0.data(), invstd0.data(), nullptr, nullptr);
    unsync_mean = max_abs_diff(mean0, mean1.data());
    unsync_invstd = 0;
    for (size_t k = 0; k < size_t(c); ++k)
      unsync_invstd =
          std::max(unsync_invstd, std::fabs(double(invstd0[k]) / double(invstd1[k]) - 1));
    unsync_y = max_abs_diff(y0, y1.data() + off);
  }

  // Errors of the synchronized run against one process, relative to the
  // largest magnitude of each quantity.
  const double row[] = {double(n),
                        max_abs_diff(mean, mean1.data()) / max_abs(mean1),
                        max_abs_diff(invstd, invstd1.data()) / max_abs(invstd1),
                        cnt ? max_abs_diff(y, y1.data() + off) / max_abs(y1) : 0.0,
                        cnt ? max_abs_diff(dx, dx1.data() + off) / max_abs(dx1) : 0.0,
                        max_abs_diff(dw, dw1.data()) / max_abs(dw1),
                        max_abs_diff(db, db1.data()) / max_abs(db1),
                        max_abs_diff(rv, rv1.data()) / max_abs(rv1),
                        unsync_mean,
                        unsync_invstd,
                        unsync_y};
  constexpr int kCols = sizeof row / sizeof row[0];
  std::vector<double> rows(rank == 0 ? size_t(size) * kCols : 0);
  MPI_Gather(row, kCols, MPI_DOUBLE, rows.data(), kCols, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf(
        "bnorm-sync-demo: %d ranks share a float batch of %lld samples x %lld channels "
        "x %lld positions\n\n",
        size, static_cast<long long>(n_total), static_cast<long long>(c),
        static_cast<long long>(s));
    std::printf("synchronized vs one process on the whole batch (max error / max magnitude):\n");
    std::printf(
        "rank  samples  save_mean  save_invstd  y          dx         dweight    dbias "
        "     running_var\n");
    for (int r = 0; r < size; ++r) {
      const double* v = &rows[size_t(r) * kCols];
      std::printf("%4d  %7.0f  %9.2e  %11.2e  %9.2e  %9.2e  %9.2e  %9.2e  %9.2e\n", r, v[0], v[1],
                  v[2], v[3], v[4], v[5], v[6], v[7]);
    }
    std::printf("\nunsynchronized (each rank's slice alone) vs the whole batch:\n");
    std::printf(
        "rank  max |mean - global mean|  max |invstd / global invstd - 1|  max |y - y "
        "global|\n");
    for (int r = 0; r < size; ++r) {
      const double* v = &rows[size_t(r) * kCols];
      std::printf("%4d  %24.4f  %32.4f  %18.4f\n", r, v[8], v[9], v[10]);
    }
    double worst = 0;
    for (int r = 0; r < size; ++r)
      for (int j = 1; j < 8; ++j) worst = std::max(worst, rows[size_t(r) * kCols + size_t(j)]);
    const bool ok = worst < 1e-6;
    std::printf("\nsynchronized == one process (float rounding, worst %.2e): %s\n", worst,
                ok ? "yes" : "NO");
    if (!ok) {
      MPI_Finalize();
      return 1;
    }
  }
  MPI_Finalize();
  return 0;
}
