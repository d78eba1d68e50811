// Time per synchronized forward + backward step at a fixed global batch, and
// the share of it spent inside MPI (the collectives are wrapped through the
// PMPI profiling interface and timed; that includes waiting for the slowest
// rank), and the time of the same protocol with no data to normalize. Run
// under mpirun with 1, 2, 4 ranks: bench/mpi/run.sh. One line per run.
#include <mpi.h>

#include <algorithm>
#include <bnorm/mpi.hpp>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {
double comm_seconds = 0;
}

extern "C" int MPI_Allreduce(const void* sendbuf, void* recvbuf, int count, MPI_Datatype type,
                             MPI_Op op, MPI_Comm comm) {
  const double t = PMPI_Wtime();
  const int rc = PMPI_Allreduce(sendbuf, recvbuf, count, type, op, comm);
  comm_seconds += PMPI_Wtime() - t;
  return rc;
}
extern "C" int MPI_Reduce(const void* sendbuf, void* recvbuf, int count, MPI_Datatype type,
                          MPI_Op op, int root, MPI_Comm comm) {
  const double t = PMPI_Wtime();
  const int rc = PMPI_Reduce(sendbuf, recvbuf, count, type, op, root, comm);
  comm_seconds += PMPI_Wtime() - t;
  return rc;
}
extern "C" int MPI_Bcast(void* buf, int count, MPI_Datatype type, int root, MPI_Comm comm) {
  const double t = PMPI_Wtime();
  const int rc = PMPI_Bcast(buf, count, type, root, comm);
  comm_seconds += PMPI_Wtime() - t;
  return rc;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // Global batch n x c x s (NHWC), default 64 x 64 x 28*28; steps timed.
  const int64_t n_total = argc > 1 ? std::atoll(argv[1]) : 64;
  const int64_t c = argc > 2 ? std::atoll(argv[2]) : 64;
  const int64_t s = argc > 3 ? std::atoll(argv[3]) : 784;
  const int steps = argc > 4 ? std::atoi(argv[4]) : 20;

  const int64_t n = n_total / size + (rank < n_total % size ? 1 : 0);
  const bnorm::Shape local{n, c, s, bnorm::Layout::NHWC};
  std::mt19937 rng(unsigned(rank) + 1);
  std::normal_distribution<float> normal;
  std::vector<float> x(size_t(local.numel())), dy(x.size()), y(x.size()), dx(x.size());
  for (float& v : x) v = normal(rng);
  for (float& v : dy) v = normal(rng);
  std::vector<float> w(size_t(c), 1.0f), b(size_t(c), 0.0f), mean(static_cast<size_t>(c)),
      invstd(static_cast<size_t>(c)), rm(size_t(c), 0.0f), rv(size_t(c), 1.0f),
      dw(static_cast<size_t>(c)), db(static_cast<size_t>(c));

  std::vector<double> step_times, comm_shares;
  for (int it = -3; it < steps; ++it) {  // 3 warm-up steps
    MPI_Barrier(MPI_COMM_WORLD);
    comm_seconds = 0;
    const double t0 = MPI_Wtime();
    bnorm::mpi::forward_training(MPI_COMM_WORLD, local, x.data(), w.data(), b.data(), y.data(),
                                 mean.data(), invstd.data(), rm.data(), rv.data());
    bnorm::mpi::backward(MPI_COMM_WORLD, local, dy.data(), x.data(), w.data(), mean.data(),
                         invstd.data(), dx.data(), dw.data(), db.data());
    // A step ends when its slowest rank ends.
    double times[2] = {MPI_Wtime() - t0, comm_seconds};
    PMPI_Allreduce(MPI_IN_PLACE, times, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (it >= 0) {
      step_times.push_back(times[0]);
      comm_shares.push_back(times[1] / times[0]);
    }
  }
  // The protocol alone: the same collectives with (almost) no data to
  // normalize, rank 0 holding the 2 values a training step needs.
  const bnorm::Shape tiny{rank == 0 ? 1 : 0, c, 2, bnorm::Layout::NHWC};
  std::vector<double> protocol_times;
  for (int it = -3; it < steps; ++it) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    bnorm::mpi::forward_training(MPI_COMM_WORLD, tiny, x.data(), w.data(), b.data(), y.data(),
                                 mean.data(), invstd.data(), rm.data(), rv.data());
    bnorm::mpi::backward(MPI_COMM_WORLD, tiny, dy.data(), x.data(), w.data(), mean.data(),
                         invstd.data(), dx.data(), dw.data(), db.data());
    double t = MPI_Wtime() - t0;
    PMPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (it >= 0) protocol_times.push_back(t);
  }
  if (rank == 0) {
    auto median = [](std::vector<double> v) {
      std::nth_element(v.begin(), v.begin() + long(v.size() / 2), v.end());
      return v[v.size() / 2];
    };
    const double step = median(step_times), protocol = median(protocol_times);
    std::printf(
        "ranks %d  batch %lld x %lld x %lld float NHWC  step (fwd+bwd) median %7.3f ms  "
        "min %7.3f ms  in MPI calls %4.1f%%  protocol alone %6.3f ms (%4.1f%% of the "
        "step)  payload per rank %lld B\n",
        size, static_cast<long long>(n_total), static_cast<long long>(c), static_cast<long long>(s),
        1e3 * step, 1e3 * *std::min_element(step_times.begin(), step_times.end()),
        100 * median(comm_shares), 1e3 * protocol, 100 * protocol / step,
        static_cast<long long>(256 + 80 * c));
  }
  MPI_Finalize();
  return 0;
}
