// bnorm::mpi: synchronized batch normalization over MPI.
//
// In data-parallel training every rank holds a slice of the batch. These
// functions normalize with the moments of the GLOBAL batch (all ranks'
// samples together), so that every rank's y, save_mean, save_invstd, running
// statistics, dx, dweight and dbias equal what bnorm::forward_training and
// bnorm::backward give on the concatenated batch, and the statistics are
// bitwise identical on every rank.
//
// Forward: each rank computes per channel (count, mean, M2 = sum (x - mean)^2)
// of its slice in float64 (whatever T is) with the core's two-pass kernel;
// the triples are merged with Chan's parallel formula in rank order by a
// user-defined MPI operation. The variance itself travels, never invstd, so
// nothing is lost when var is small next to eps. Ranks may hold different
// batch sizes, zero included (local shape.n = 0, x and y may then be null).
// Backward: one reduction of sum(dy) and sum(dy * x_hat) per channel; dweight
// and dbias are the global sums on every rank.
//
// Collectives per call, on the communicator given (all ranks must call):
//   1. a pre-flight all-reduce of 16 int64 (128 bytes): c, layout, dtype,
//      eps, momentum, num_batches_tracked and whether running statistics are
//      tracked must agree across ranks (their min and max are reduced), every
//      rank reports whether its own arguments are valid, and the global m is
//      summed. Any mismatch or bad
//      argument throws std::invalid_argument with the same message on every
//      rank (a rank's own error text is broadcast from it) before anything
//      is written, instead of a hang or a wrong answer.
//   2. forward: the merge of c triples of 3 doubles, reduced to rank 0 and
//      broadcast: 24c bytes sent by every rank in the reduction, 24c bytes
//      in the broadcast. backward: c pairs of 2 doubles, the same way: 16c
//      bytes each way.
// Per training step (forward + backward) that is 128 + 24c + 24c bytes and
// 128 + 16c + 16c bytes of payload, i.e. 256 + 80c, independent of the batch
// size (tests/mpi counts them through the PMPI profiling interface).
//
// Training needs a global m = sum over ranks of n * s > 1; otherwise every
// rank throws the same error. shape.s may differ between ranks; c may not.
//
// Timeouts: a rank that never enters a call (a rank in eval mode while the
// others train, a rank that skipped a step, a rank that died) would leave
// the others waiting in the collective forever. Every collective is posted
// non-blocking and polled against a deadline, timeout() after the call
// started (default 10 minutes, as torch.distributed's watchdog; set it with
// set_timeout() or the environment variable BNORM_MPI_TIMEOUT_MS). When it
// passes, each waiting rank throws timeout_error naming the call, the
// communicator's size and the time waited. The communicator is then unusable
// (a collective was left half done, and MPI cannot cancel one): the
// application must abort it, MPI_Abort(comm, code), as after any MPI
// failure; the pending collective's buffers are deliberately never freed.
#pragma once

#include <mpi.h>

#include <bnorm/bnorm.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <vector>

namespace bnorm::mpi {

// Thrown on every rank that waited past the deadline in a collective.
class timeout_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The time one call may wait for the other ranks (all its collectives
// together); process-wide. set_timeout throws std::invalid_argument unless
// timeout > 0. Without set_timeout, timeout() reads BNORM_MPI_TIMEOUT_MS (a
// positive integer; anything else throws std::invalid_argument naming the
// variable) or returns 10 minutes.
void set_timeout(std::chrono::milliseconds timeout);
std::chrono::milliseconds timeout();

// As bnorm::forward_training, with local = this rank's slice (n >= 0).
// running_mean/running_var are updated identically on every rank with the
// global unbiased variance var * m / (m - 1).
template <class T>
void forward_training(MPI_Comm comm, const Shape& local, const T* x, const T* weight, const T* bias,
                      T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                      const Options& options = {});

// As bnorm::backward, with save_mean/save_invstd from mpi::forward_training
// (the global statistics). dx is this rank's slice; dweight and dbias are the
// sums over all ranks.
template <class T>
void backward(MPI_Comm comm, const Shape& local, const T* dy, const T* x, const T* weight,
              const T* save_mean, const T* save_invstd, T* dx, T* dweight, T* dbias);

// bnorm::BatchNorm with a communicator: in training mode (and in eval mode
// without running statistics) forward and backward are synchronized across
// the communicator's ranks; in eval mode with running statistics the layer is
// rank-local, like PyTorch's SyncBatchNorm. The communicator is not owned and
// must outlive the layer's calls.
template <class T>
class SyncBatchNorm {
 public:
  SyncBatchNorm(MPI_Comm comm, int64_t num_features, double eps = 1e-5,
                std::optional<double> momentum = 0.1, bool affine = true,
                bool track_running_stats = true);

  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool training() const { return training_; }

  // x: this rank's slice (shape.n may be 0).
  std::vector<T> forward(const Shape& shape, std::span<const T> x);

  using Gradients = typename BatchNorm<T>::Gradients;
  Gradients backward(std::span<const T> dy) const;

  MPI_Comm comm() const { return comm_; }
  int64_t num_features() const { return c_; }
  double eps() const { return eps_; }
  std::optional<double> momentum() const { return momentum_; }
  bool affine() const { return affine_; }
  bool tracks_running_stats() const { return track_; }
  int64_t num_batches_tracked() const { return num_batches_tracked_; }
  std::span<T> weight() { return weight_; }
  std::span<T> bias() { return bias_; }
  std::span<T> running_mean() { return running_mean_; }
  std::span<T> running_var() { return running_var_; }
  std::span<const T> weight() const { return weight_; }
  std::span<const T> bias() const { return bias_; }
  std::span<const T> running_mean() const { return running_mean_; }
  std::span<const T> running_var() const { return running_var_; }

 private:
  MPI_Comm comm_;
  int64_t c_;
  double eps_;
  std::optional<double> momentum_;
  bool affine_;
  bool track_;
  bool training_ = true;
  int64_t num_batches_tracked_ = 0;
  std::vector<T> weight_, bias_, running_mean_, running_var_;
  Shape shape_{};
  bool have_cache_ = false;
  bool cache_batch_stats_ = false;
  std::vector<T> x_, mean_, invstd_;
};

extern template class SyncBatchNorm<float>;
extern template class SyncBatchNorm<double>;

}  // namespace bnorm::mpi
