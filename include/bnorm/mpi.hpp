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
//   1. a pre-flight all-reduce of 20 int64 (160 bytes): c, layout, dtype,
//      eps, momentum, num_batches_tracked, whether running statistics are
//      tracked and with which variance (Options::unbiased_running_var), and
//      Batch Renormalization's rmax and dmax must agree across ranks (their min and max are
//      reduced), every rank reports whether its own arguments are valid, and the global m is
//      summed. Any mismatch or bad
//      argument throws std::invalid_argument with the same message on every
//      rank (a rank's own error text is broadcast from it) before anything
//      is written, instead of a hang or a wrong answer.
//   2. forward: the merge of c triples of 3 doubles, reduced to rank 0 and
//      broadcast: 24c bytes sent by every rank in the reduction, 24c bytes
//      in the broadcast. backward: c pairs of 2 doubles, the same way: 16c
//      bytes each way.
// Per training step (forward + backward) that is 160 + 24c + 24c bytes and
// 160 + 16c + 16c bytes of payload, i.e. 320 + 80c, independent of the batch
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
// global unbiased variance var * m / (m - 1) (the global var with
// options.unbiased_running_var = false).
template <class T>
void forward_training(MPI_Comm comm, const Shape& local, const T* x, const param_t<T>* weight,
                      const param_t<T>* bias, T* y, param_t<T>* save_mean, param_t<T>* save_invstd,
                      param_t<T>* running_mean, param_t<T>* running_var,
                      const Options& options = {});

// As bnorm::backward, with save_mean/save_invstd from mpi::forward_training
// (the global statistics). dx is this rank's slice; dweight and dbias are the
// sums over all ranks.
template <class T>
void backward(MPI_Comm comm, const Shape& local, const T* dy, const T* x, const param_t<T>* weight,
              const param_t<T>* save_mean, const param_t<T>* save_invstd, T* dx,
              param_t<T>* dweight, param_t<T>* dbias);

// As bnorm::batch_renorm_forward_training / batch_renorm_backward: r and d
// from the global batch statistics and the running statistics (which must be
// the same on every rank, as the synchronized updates keep them), identical
// on every rank; the same collectives as batch norm.
template <class T>
void batch_renorm_forward_training(MPI_Comm comm, const Shape& local, const T* x,
                                   const param_t<T>* weight, const param_t<T>* bias, T* y,
                                   param_t<T>* save_mean, param_t<T>* save_invstd, param_t<T>* r,
                                   param_t<T>* d, param_t<T>* running_mean, param_t<T>* running_var,
                                   const RenormLimits& limits, const Options& options = {});
template <class T>
void batch_renorm_backward(MPI_Comm comm, const Shape& local, const T* dy, const T* x,
                           const param_t<T>* weight, const param_t<T>* save_mean,
                           const param_t<T>* save_invstd, const param_t<T>* r, const param_t<T>* d,
                           T* dx, param_t<T>* dweight, param_t<T>* dbias);

// bnorm::BatchNorm with a communicator: in training mode (and in eval mode
// without running statistics) forward and backward are synchronized across
// the communicator's ranks; in eval mode with running statistics the layer is
// rank-local, like PyTorch's SyncBatchNorm. The communicator is not owned and
// must outlive the layer's calls. The parameters, running statistics,
// counter and settings are BatchNorm's own (BatchNormState); only the
// statistics and gradient passes differ.
template <class T>
class SyncBatchNorm : public BatchNormState<T> {
 public:
  using typename BatchNormState<T>::param_type;
  using typename BatchNormState<T>::Gradients;

  SyncBatchNorm(MPI_Comm comm, int64_t num_features, double eps = 1e-5,
                std::optional<double> momentum = 0.1, bool affine = true,
                bool track_running_stats = true);

  // x: this rank's slice (shape.n may be 0).
  std::vector<T> forward(const Shape& shape, std::span<const T> x);

  Gradients backward(std::span<const T> dy) const;

  MPI_Comm comm() const { return comm_; }

 private:
  MPI_Comm comm_;
};

#define BNORM_EXTERN(T, ...) extern template class SyncBatchNorm<T>;
BNORM_FOR_EACH_TYPE(BNORM_EXTERN)
#undef BNORM_EXTERN

}  // namespace bnorm::mpi
