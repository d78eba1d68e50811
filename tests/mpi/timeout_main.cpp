// A rank that does not enter a synchronized call must not leave the others
// waiting forever. Run under mpirun with 3 ranks and a short timeout; rank 0
// misbehaves, as argv[1] says:
//   eval  rank 0 runs the layer in eval mode (rank-local) while the others
//         train (synchronized): they wait for it at their first forward;
//   skip  rank 0 skips the second of three training forwards: its third
//         pairs with the others' second, and the others' third waits.
// Every other rank must throw bnorm::mpi::timeout_error (having waited at
// least the timeout; the time is printed against 2x the timeout), rank 0
// none. Rank 0 prints the verdict and the job ends with MPI_Abort, as the
// documentation tells applications to do; ctest's time limit proves that
// nothing hangs.
#include <mpi.h>

#include <bnorm/mpi.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Outcome {
  int kind = 0;  // 0: no error, 1: timeout_error as specified, 2: anything else
  int step = -1;
  double waited_ms = 0;
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::string scenario = argc > 1 ? argv[1] : "";
  if (scenario != "eval" && scenario != "skip") {
    if (rank == 0) std::fprintf(stderr, "usage: bnorm_mpi_timeout eval|skip\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  // "eval" takes the timeout from BNORM_MPI_TIMEOUT_MS (set by ctest),
  // "skip" from set_timeout.
  if (scenario == "skip") bnorm::mpi::set_timeout(std::chrono::milliseconds(1500));
  const double limit_ms = double(bnorm::mpi::timeout().count());

  // The layer gets its own communicator: the pending collective a timeout
  // leaves behind stays there, and the report below uses MPI_COMM_WORLD.
  MPI_Comm layer_comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &layer_comm);
  bnorm::mpi::SyncBatchNorm<float> bn(layer_comm, 4);
  if (rank == 0 && scenario == "eval") bn.eval();
  const bnorm::Shape shape{3, 4, 5, bnorm::Layout::NCHW};
  std::vector<float> x(size_t(shape.numel()));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float((i * 7 + size_t(rank)) % 11) - 5.0f;

  Outcome mine;
  std::string message;
  for (int step = 0; step < 3; ++step) {
    if (rank == 0 && scenario == "skip" && step == 1) continue;
    const auto start = Clock::now();
    try {
      bn.forward(shape, x);
    } catch (const bnorm::mpi::timeout_error& e) {
      mine.waited_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      message = e.what();
      const bool names_all =
          message.find("mpi::SyncBatchNorm::forward") != std::string::npos &&
          message.find("communicator of " + std::to_string(size) + " ranks") != std::string::npos &&
          message.find("timed out after") != std::string::npos &&
          message.find("MPI_Abort") != std::string::npos;
      mine.kind = names_all && mine.waited_ms >= limit_ms ? 1 : 2;
      mine.step = step;
      break;
    } catch (const std::exception& e) {
      message = e.what();
      mine.kind = 2;
      mine.step = step;
      break;
    }
  }
  std::printf("[rank %d] %s\n", rank, message.empty() ? "no error" : message.c_str());
  std::fflush(stdout);

  std::vector<Outcome> all(static_cast<size_t>(size));
  MPI_Gather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    bool pass = all[0].kind == 0;
    for (int r = 1; r < size; ++r) {
      const Outcome& o = all[size_t(r)];
      pass = pass && o.kind == 1;
      std::printf("rank %d: %s at forward %d after %.0f ms (timeout %.0f ms, %.2fx)\n", r,
                  o.kind == 1   ? "timeout_error"
                  : o.kind == 0 ? "NO ERROR"
                                : "WRONG ERROR",
                  o.step, o.waited_ms, limit_ms, o.waited_ms / limit_ms);
    }
    std::printf("timeout test (%s, %d ranks): %s\n", scenario.c_str(), size,
                pass ? "PASS" : "FAILED");
    std::fflush(stdout);
  }
  // No rank aborts before rank 0 has printed the verdict.
  MPI_Barrier(MPI_COMM_WORLD);
  // The layer's communicator has a collective that will never complete.
  MPI_Abort(MPI_COMM_WORLD, 0);
}
