// The collectives of synchronized batch norm, kept apart from the math so
// that what travels between ranks is in one place.
#pragma once

#include <mpi.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

namespace bnorm::mpi {

// What every rank must agree on before the first collective that depends on
// c (a rank with another c would post a reduction of another size: a hang).
// track_running_stats: 0 null, 1 tracked with the unbiased running variance,
// 2 with the biased one (Options::unbiased_running_var). rmax, dmax: Batch
// Renormalization's limits (their bits; 0 for batch norm).
enum class Field {
  c,
  layout,
  dtype,
  eps,
  momentum,
  num_batches_tracked,
  track_running_stats,
  rmax,
  dmax
};
inline constexpr int kFields = 9;

struct Agreement {
  std::array<int64_t, kFields> value{};  // unset fields are 0 on every rank
  std::string local_error;               // this rank's argument error, or empty
  int64_t m = 0;                         // this rank's n * s

  void set(Field f, int64_t v) { value[static_cast<size_t>(f)] = v; }
};

// The time limit of one public call (all its collectives together), taken
// from bnorm::mpi::timeout() when the call starts.
struct Deadline {
  Deadline(MPI_Comm comm, const char* fn);
  MPI_Comm comm;
  const char* fn;
  std::chrono::steady_clock::time_point start, end;
};

// Runs check() and returns the message of the std::invalid_argument it
// throws, or "" when it does not throw.
std::string local_error(const std::function<void()>& check);

// Every collective below is posted non-blocking and polled until it
// completes or the deadline passes; then bnorm::mpi::timeout_error is thrown
// and the request is left pending (MPI cannot cancel a collective), its
// buffers kept alive so that a late partner cannot write into freed memory.
//
// One all-reduce of 20 int64 (the min and max of every field, the lowest
// rank with an error, the sum of m). Throws std::invalid_argument with the
// same text on every rank when a rank's arguments are bad (that rank's own
// message, broadcast from it) or a field differs between ranks. Returns the
// global m.
int64_t agree(const Deadline& deadline, const Agreement& mine);

// Per channel, the count, mean and sum of squared deviations of a set of
// values; count = 0 (with mean = m2 = 0) is the empty set.
struct Moments {
  double count = 0;
  double mean = 0;
  double m2 = 0;
};

// Replaces every rank's moments by those of the union over ranks, merged in
// rank order, bitwise identical on every rank.
void merge_moments(const Deadline& deadline, std::span<Moments> moments);

struct Sums {
  double dy = 0;
  double dy_xhat = 0;
};

// Replaces every rank's sums by the sums over ranks, added in rank order,
// bitwise identical on every rank.
void sum_gradients(const Deadline& deadline, std::span<Sums> sums);

}  // namespace bnorm::mpi
