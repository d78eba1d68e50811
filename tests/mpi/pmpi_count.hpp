// Counts what the code under test hands to MPI: the MPI_* communication
// calls below are defined here and forward to their PMPI_* twins (the MPI
// profiling interface), so every call made by bnorm_mpi, linked into this
// executable, passes through them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bnorm::test {

struct Call {
  std::string name;
  int64_t bytes;  // count * size of the datatype: the payload this rank hands over
};

// Starts recording (clearing what was recorded) and stops it.
void start_counting();
std::vector<Call> stop_counting();

}  // namespace bnorm::test
