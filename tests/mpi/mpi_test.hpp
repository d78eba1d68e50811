// Helpers of the MPI tests: every rank builds the same global batch from a
// seed, keeps its own slice, and compares with one process on the whole.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace bnorm::test {

inline int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

inline int size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// True when v holds the same bytes on every rank (as rank 0's).
template <class T>
bool same_on_all_ranks(const std::vector<T>& v) {
  std::vector<T> root = v;
  MPI_Bcast(root.data(), int(root.size() * sizeof(T)), MPI_BYTE, 0, MPI_COMM_WORLD);
  int same = std::memcmp(root.data(), v.data(), v.size() * sizeof(T)) == 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &same, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return same == 1;
}

inline std::string same_string_on_all_ranks(const std::string& s, bool* same) {
  int64_t len = int64_t(s.size());
  MPI_Bcast(&len, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  std::string root = rank() == 0 ? s : std::string(size_t(len), ' ');
  MPI_Bcast(root.data(), int(len), MPI_CHAR, 0, MPI_COMM_WORLD);
  int ok = root == s ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  *same = ok == 1;
  return root;
}

// Runs f and returns the std::invalid_argument text it throws ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return {};
}

inline double global_max(double v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return v;
}

}  // namespace bnorm::test
