// Why reduce-then-broadcast rather than MPI_Allreduce for the statistics:
//
// Chan's merge (and floating-point addition) is not associative, so the
// rounding of the global mean and variance depends on how the ranks'
// contributions are bracketed. Declaring the user operation non-commutative
// fixes the ORDER of the operands (ascending rank; MPI standard, user-defined reduction
// operations), and the bracketing is fixed by the algorithm the library selects from the
// communicator size and message size, never by timing. But MPI_Allreduce only
// *recommends* that every rank receive the same result: a
// reduce-scatter/allgather or recursive-doubling allreduce may combine the
// same operands under a different bracketing on different ranks. Reducing to
// rank 0 and broadcasting rank 0's bytes makes "every rank holds bitwise the
// same statistics" a property of this code rather than of the MPI library,
// for two tree latencies instead of one (MPI libraries' own "non-overlapping"
// allreduce is exactly this pair). The payload stays O(c): c triples up the
// tree, c triples down, never an O(ranks x c) gather. The pre-flight check
// below can use MPI_Allreduce: its integer min, max and sum are exact.
#include "mpi/collectives.hpp"

#include <algorithm>
#include <atomic>
#include <bnorm/mpi.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace bnorm::mpi {
namespace {

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw std::runtime_error(std::string("bnorm::mpi: ") + call +
                           " failed: " + std::string(text, size_t(len)));
}

// --- deadlines ---------------------------------------------------------------

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// 0: not set by set_timeout (read the environment).
std::atomic<int64_t> timeout_set_ms{0};

milliseconds timeout_from_environment() {
  const char* text = std::getenv("BNORM_MPI_TIMEOUT_MS");
  if (text == nullptr || *text == '\0') return std::chrono::minutes(10);
  char* end = nullptr;
  errno = 0;
  const long long ms = std::strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || ms <= 0)
    throw std::invalid_argument(
        std::string("bnorm::mpi: BNORM_MPI_TIMEOUT_MS must be a positive number of "
                    "milliseconds, got \"") +
        text + "\"");
  return milliseconds(ms);
}

// Buffers of collectives abandoned at a timeout: MPI may still write into
// them if a late rank joins, so they are never freed (and stay reachable, so
// LeakSanitizer does not count them).
std::vector<std::shared_ptr<void>>& abandoned() {
  static std::vector<std::shared_ptr<void>> buffers;
  return buffers;
}
std::mutex abandoned_mutex;

// Polls the request until it completes or the deadline passes. Polling
// starts with yields (a partner that is already there answers within
// microseconds) and backs off to 1 ms sleeps, so that a long wait does not
// take a core from the ranks it waits for.
void wait(MPI_Request* request, const Deadline& deadline, const char* call,
          std::shared_ptr<void> buffer) {
  int done = 0;
  for (int polls = 0;; ++polls) {
    check(MPI_Test(request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) return;
    const auto now = Clock::now();
    if (now >= deadline.end) {
      {
        const std::lock_guard<std::mutex> lock(abandoned_mutex);
        abandoned().push_back(std::move(buffer));
      }
      int size = 0;
      MPI_Comm_size(deadline.comm, &size);
      const auto waited = std::chrono::duration_cast<milliseconds>(now - deadline.start).count();
      throw timeout_error(
          std::string("bnorm::") + deadline.fn + ": timed out after " + std::to_string(waited) +
          " ms (timeout " + std::to_string(bnorm::mpi::timeout().count()) + " ms) in " + call +
          " on a communicator of " + std::to_string(size) +
          " ranks: some rank did not enter this call (a rank in eval mode while the others "
          "train, a skipped step, or a dead process). The communicator cannot be used again: "
          "abort it with MPI_Abort");
    }
    if (polls < 1000)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(polls < 2000 ? 50 : 1000));
  }
}

// A committed datatype or an operation, freed on every exit path.
struct Type {
  MPI_Datatype type = MPI_DATATYPE_NULL;
  Type(int count, MPI_Datatype base) {
    check(MPI_Type_contiguous(count, base, &type), "MPI_Type_contiguous");
    check(MPI_Type_commit(&type), "MPI_Type_commit");
  }
  ~Type() { MPI_Type_free(&type); }
  Type(const Type&) = delete;
  Type& operator=(const Type&) = delete;
};

struct Op {
  MPI_Op op = MPI_OP_NULL;
  Op(MPI_User_function* fn, bool commutative) {
    check(MPI_Op_create(fn, commutative ? 1 : 0, &op), "MPI_Op_create");
  }
  ~Op() { MPI_Op_free(&op); }
  Op(const Op&) = delete;
  Op& operator=(const Op&) = delete;
};

// --- pre-flight agreement -------------------------------------------------

// Layout of the 20 int64: min and max of every field, then the lowest failing
// rank encoded as size - rank (0: none; max picks the lowest rank), then m.
constexpr int kLo = 0, kHi = kFields, kErr = 2 * kFields, kM = 2 * kFields + 1;
constexpr int kAgreementInts = 2 * kFields + 2;

// Integer min, max and sum are exact, so this operation is truly associative
// and commutative and MPI_Allreduce gives the same bits everywhere.
void agreement_op(void* in_v, void* inout_v, int* len, MPI_Datatype*) {
  const auto* in = static_cast<const int64_t*>(in_v);
  auto* io = static_cast<int64_t*>(inout_v);
  for (int e = 0; e < *len; ++e, in += kAgreementInts, io += kAgreementInts) {
    for (int f = 0; f < kFields; ++f) {
      io[kLo + f] = std::min(io[kLo + f], in[kLo + f]);
      io[kHi + f] = std::max(io[kHi + f], in[kHi + f]);
    }
    io[kErr] = std::max(io[kErr], in[kErr]);
    io[kM] += in[kM];
  }
}

const char* field_name(int f) {
  static constexpr const char* names[kFields] = {"shape.c",
                                                 "shape.layout",
                                                 "the element type",
                                                 "options.eps",
                                                 "options.momentum",
                                                 "options.num_batches_tracked",
                                                 "running statistics (given or null) and "
                                                 "options.unbiased_running_var",
                                                 "Batch Renormalization's rmax",
                                                 "Batch Renormalization's dmax"};
  return names[f];
}

std::string describe(int f, int64_t v) {
  double d;
  switch (static_cast<Field>(f)) {
    case Field::layout:
      return v == 0 ? "NCHW" : v == 1 ? "NHWC" : "invalid(" + std::to_string(v) + ")";
    case Field::dtype:
      return v >= 0 && v < kDTypeCount ? dtype_name(static_cast<DType>(v))
                                       : "invalid(" + std::to_string(v) + ")";
    case Field::eps:
      std::memcpy(&d, &v, sizeof d);
      return std::to_string(d);
    case Field::rmax:
    case Field::dmax:
      if (v == 0) return "none (batch norm)";
      std::memcpy(&d, &v, sizeof d);
      return std::to_string(d);
    case Field::momentum:
      if (v == -1) return "nullopt";
      std::memcpy(&d, &v, sizeof d);
      return std::to_string(d);
    case Field::track_running_stats:
      return v == 0 ? "null" : v == 1 ? "given, unbiased running_var" : "given, biased running_var";
    default:
      return std::to_string(v);
  }
}

// --- statistics -----------------------------------------------------------

// Chan, Golub and LeVeque's pairwise update: the union of two sets from
// their counts, means and M2. Written with the weight nb / n so that merging
// with the empty set (0, 0, 0) returns the other operand bit for bit: a rank
// with no samples changes nothing and needs no path of its own.
Moments merge(const Moments& a, const Moments& b) {
  const double n = a.count + b.count;
  if (n == 0) return {};  // both empty: 0/0 below would make NaN
  const double wb = b.count / n;
  const double delta = b.mean - a.mean;
  return {n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * (a.count * wb)};
}

// MPI calls a user function with invec holding the lower ranks' combination
// and inoutvec the higher ranks' when the operation is non-commutative.
void moments_op(void* in_v, void* inout_v, int* len, MPI_Datatype*) {
  const auto* in = static_cast<const Moments*>(in_v);
  auto* io = static_cast<Moments*>(inout_v);
  for (int i = 0; i < *len; ++i) io[i] = merge(in[i], io[i]);
}

void sums_op(void* in_v, void* inout_v, int* len, MPI_Datatype*) {
  const auto* in = static_cast<const Sums*>(in_v);
  auto* io = static_cast<Sums*>(inout_v);
  for (int i = 0; i < *len; ++i) io[i] = {in[i].dy + io[i].dy, in[i].dy_xhat + io[i].dy_xhat};
}

// Reduce in rank order to rank 0, then broadcast its result (see the top).
// The data travel in a heap copy that a timeout can abandon.
template <class E>
void reduce_broadcast(const Deadline& deadline, std::span<E> data, MPI_User_function* fn) {
  static_assert(sizeof(E) % sizeof(double) == 0);
  if (data.size() > size_t(std::numeric_limits<int>::max()))
    throw std::invalid_argument("bnorm::mpi: more channels than an MPI count can hold");
  int rank = 0;
  check(MPI_Comm_rank(deadline.comm, &rank), "MPI_Comm_rank");
  const Type type(int(sizeof(E) / sizeof(double)), MPI_DOUBLE);
  const Op op(fn, /*commutative=*/false);
  const int count = int(data.size());
  auto buffer = std::make_shared<std::vector<E>>(data.begin(), data.end());
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Ireduce(rank == 0 ? MPI_IN_PLACE : buffer->data(), buffer->data(), count, type.type,
                    op.op, 0, deadline.comm, &request),
        "MPI_Ireduce");
  wait(&request, deadline, "MPI_Ireduce", buffer);
  check(MPI_Ibcast(buffer->data(), count, type.type, 0, deadline.comm, &request), "MPI_Ibcast");
  wait(&request, deadline, "MPI_Ibcast", buffer);
  std::copy(buffer->begin(), buffer->end(), data.begin());
}

}  // namespace

std::string local_error(const std::function<void()>& check_fn) {
  try {
    check_fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return {};
}

int64_t agree(const Deadline& deadline, const Agreement& mine) {
  MPI_Comm comm = deadline.comm;
  const char* fn = deadline.fn;
  int rank = 0, size = 0;
  check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  check(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  auto storage = std::make_shared<std::array<int64_t, kAgreementInts>>();
  int64_t* buf = storage->data();
  for (int f = 0; f < kFields; ++f) buf[kLo + f] = buf[kHi + f] = mine.value[size_t(f)];
  buf[kErr] = mine.local_error.empty() ? 0 : size - rank;
  buf[kM] = mine.m;
  {
    const Type type(kAgreementInts, MPI_INT64_T);
    const Op op(agreement_op, /*commutative=*/true);
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Iallreduce(MPI_IN_PLACE, buf, 1, type.type, op.op, comm, &request), "MPI_Iallreduce");
    wait(&request, deadline, "MPI_Iallreduce (the pre-flight check)", storage);
  }
  if (buf[kErr] != 0) {
    // Every rank throws the failing rank's own words, not just "some rank
    // failed": the collective that follows runs only on this error path.
    const int root = size - int(buf[kErr]);
    auto length = std::make_shared<int64_t>(int64_t(mine.local_error.size()));
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Ibcast(length.get(), 1, MPI_INT64_T, root, comm, &request), "MPI_Ibcast");
    wait(&request, deadline, "MPI_Ibcast (an argument error)", length);
    auto text = std::make_shared<std::string>(rank == root ? mine.local_error
                                                           : std::string(size_t(*length), ' '));
    check(MPI_Ibcast(text->data(), int(*length), MPI_CHAR, root, comm, &request), "MPI_Ibcast");
    wait(&request, deadline, "MPI_Ibcast (an argument error)", text);
    throw std::invalid_argument(*text + " [on rank " + std::to_string(root) + " of " +
                                std::to_string(size) + "]");
  }
  for (int f = 0; f < kFields; ++f)
    if (buf[kLo + f] != buf[kHi + f])
      throw std::invalid_argument(std::string("bnorm::") + fn + ": ranks disagree on " +
                                  field_name(f) + ": " + describe(f, buf[kLo + f]) +
                                  " on some ranks, " + describe(f, buf[kHi + f]) +
                                  " on others; every rank must pass the same c, layout, "
                                  "element type, eps, momentum, running statistics and "
                                  "renormalization limits");
  return buf[kM];
}

void merge_moments(const Deadline& deadline, std::span<Moments> moments) {
  reduce_broadcast(deadline, moments, moments_op);
}

void sum_gradients(const Deadline& deadline, std::span<Sums> sums) {
  reduce_broadcast(deadline, sums, sums_op);
}

Deadline::Deadline(MPI_Comm comm_in, const char* fn_in)
    : comm(comm_in), fn(fn_in), start(Clock::now()), end(start + bnorm::mpi::timeout()) {}

void set_timeout(std::chrono::milliseconds timeout_ms) {
  if (timeout_ms.count() <= 0)
    throw std::invalid_argument("bnorm::mpi::set_timeout: timeout must be > 0 ms, got " +
                                std::to_string(timeout_ms.count()));
  timeout_set_ms.store(timeout_ms.count());
}

std::chrono::milliseconds timeout() {
  const int64_t set = timeout_set_ms.load();
  return set > 0 ? milliseconds(set) : timeout_from_environment();
}

}  // namespace bnorm::mpi
