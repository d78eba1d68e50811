// Normalizes a batch of 4 over the one-rank MPI_COMM_SELF and checks the
// closed form: values 1, 2, 3, 4 have mean 2.5 and biased variance 1.25.
#include <mpi.h>

#include <bnorm/mpi.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  bnorm::mpi::SyncBatchNorm<double> bn(MPI_COMM_SELF, 1, /*eps=*/1e-12);
  const std::vector<double> x{1, 2, 3, 4};
  const auto y = bn.forward({4, 1, 1, bnorm::Layout::NCHW}, x);
  const double invstd = 1 / std::sqrt(1.25 + 1e-12);
  bool ok = true;
  for (size_t i = 0; i < x.size(); ++i) ok &= std::fabs(y[i] - (x[i] - 2.5) * invstd) < 1e-12;
  ok &= std::fabs(bn.running_var()[0] - (0.9 + 0.1 * 1.25 * 4 / 3)) < 1e-12;
  std::printf("downstream bnorm::bnorm_mpi: %s\n", ok ? "ok" : "WRONG");
  MPI_Finalize();
  return ok ? 0 : 1;
}
