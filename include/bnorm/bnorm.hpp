// bnorm: Batch Normalization (Ioffe and Szegedy, 2015) for the CPU.
//
// Semantics follow PyTorch's torch.nn.functional.batch_norm. For every
// channel k, over its m = n * s values x_i (all samples, all spatial
// positions):
//
//   mean_k   = (1/m) * sum_i x_i
//   var_k    = (1/m) * sum_i (x_i - mean_k)^2          (biased: normalizes)
//   invstd_k = 1 / sqrt(var_k + eps)
//   x_hat_i  = (x_i - mean_k) * invstd_k
//   y_i      = weight_k * x_hat_i + bias_k
//
// Running statistics (training only, when the caller passes them):
//
//   running_mean = (1 - momentum) * running_mean + momentum * mean_k
//   running_var  = (1 - momentum) * running_var  + momentum * var_k * m/(m-1)
//
// i.e. running_var tracks the unbiased variance (PyTorch, cuDNN). With
// Options::unbiased_running_var = false it tracks the batch variance var_k
// itself (1/m), as ONNX BatchNormalization-15, Flax and Keras's unfused path
// do. Those frameworks also state momentum as the decay of the old value:
//   their momentum = 1 - bnorm's momentum
// (ONNX's default 0.9 is bnorm's 0.1). With momentum = nullopt the
// factor is 1 / num_batches_tracked (a cumulative average over the batches
// seen, this one included); the caller must then pass that count in
// Options::num_batches_tracked. The layer class BatchNorm keeps the count.
//
// Inference normalizes with the running statistics instead:
//   y_i = weight_k * (x_i - running_mean_k) / sqrt(running_var_k + eps) + bias_k
//
// Backward (training mode), with x_hat recomputed from save_mean/save_invstd:
//   dbias_k   = sum_i dy_i
//   dweight_k = sum_i dy_i * x_hat_i
//   dx_i      = weight_k * invstd_k * (dy_i - dbias_k/m - x_hat_i * dweight_k/m)
//
// Errors: every function checks all its arguments before it writes anything
// and throws std::invalid_argument naming the argument and its value. A NaN
// or Inf in x spoils only its own channel's outputs and statistics.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "dtypes.hpp"
#include "types.hpp"

namespace bnorm {

// Threads the kernels use: 0 (the default) follows OpenMP (OMP_NUM_THREADS,
// else one per core). Results are bitwise identical for every thread count.
// Throws std::invalid_argument for a negative count.
void set_num_threads(int threads);
// The count the next call will use.
int num_threads();

// Element types T: float, double, bfloat16, float16 (dtypes.hpp). x, y, dy
// and dx are T; weight, bias, the saved and running statistics, dweight and
// dbias are P = param_t<T> (float for the 16-bit types). The 16-bit types
// are computed in float and rounded once to T.
//
// Training forward: normalizes with the batch statistics.
// x, y: numel values in the shape's layout. weight, bias: c values or null
// (gamma = 1, beta = 0). save_mean, save_invstd: c outputs (mean and
// 1/sqrt(var + eps)), each may be null when not needed. running_mean,
// running_var: c values updated in place, both null or both non-null.
// Requires m = n * s > 1.
template <class T>
void forward_training(const Shape& shape, const T* x, const param_t<T>* weight,
                      const param_t<T>* bias, T* y, param_t<T>* save_mean, param_t<T>* save_invstd,
                      param_t<T>* running_mean, param_t<T>* running_var,
                      const Options& options = {});

// Inference forward: normalizes with running_mean and running_var (c values).
template <class T>
void forward_inference(const Shape& shape, const T* x, const param_t<T>* weight,
                       const param_t<T>* bias, const param_t<T>* running_mean,
                       const param_t<T>* running_var, T* y, double eps = 1e-5);

// Training backward: gradients of the loss through the batch statistics.
// dy, x: numel values; save_mean, save_invstd: what forward_training saved.
// dx (numel), dweight, dbias (c each) may each be null when not wanted.
// dweight is the gradient for gamma even when weight is null (gamma = 1).
template <class T>
void backward(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
              const param_t<T>* save_mean, const param_t<T>* save_invstd, T* dx,
              param_t<T>* dweight, param_t<T>* dbias);

// Backward with mean and invstd held constant (a stop-gradient through the
// moments): dx_i = weight_k * invstd_k * dy_i; dweight and dbias as above.
// This is the exact gradient of inference mode (pass running_mean and
// 1/sqrt(running_var + eps)); used in training it is the "frozen moments"
// mistake the demo measures.
template <class T>
void backward_frozen_moments(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
                             const param_t<T>* mean, const param_t<T>* invstd, T* dx,
                             param_t<T>* dweight, param_t<T>* dbias);

// Inference backward: the exact gradient of forward_inference, the running
// statistics being constants. backward_frozen_moments with mean =
// running_mean and invstd = 1/sqrt(running_var + eps), rounded to param_t<T>
// as forward_training saves it:
//   dx_i = weight_k * invstd_k * dy_i,  dweight_k = sum_i dy_i * x_hat_i,  dbias_k = sum_i dy_i.
// dx, dweight and dbias may each be null when not wanted.
template <class T>
void backward_inference(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
                        const param_t<T>* running_mean, const param_t<T>* running_var, T* dx,
                        param_t<T>* dweight, param_t<T>* dbias, double eps = 1e-5);

// ---- Batch Renormalization (Ioffe, 2017, arXiv:1702.03275, Algorithm 1) ----
//
// Per channel, with the running statistics as they are before this batch:
//   sigma   = sqrt(running_var + eps),   sigma_B = sqrt(var_k + eps)
//   r       = clip(sigma_B / sigma, 1/rmax, rmax)
//   d       = clip((mean_k - running_mean) / sigma, -dmax, dmax)
//   x_hat_i = (x_i - mean_k) / sigma_B * r + d
//   y_i     = weight_k * x_hat_i + bias_k
// then the running statistics are updated as forward_training does (same
// momentum, same Options::unbiased_running_var convention). r and d are
// constants for the gradient (stop-gradient), so backward is batch norm's
// with weight * r in place of weight, and dweight = sum dy * x_hat. Inference
// is forward_inference. rmax = 1, dmax = 0 gives r = 1, d = 0: batch norm,
// bit for bit. Requires rmax >= 1 and dmax >= 0 (finite), the running
// statistics (they define r and d), and m > 1.
struct RenormLimits {
  double rmax = 3.0;
  double dmax = 5.0;
};

// The paper's schedule (Section 4.1): rmax = 1, dmax = 0 (batch norm) for the
// first 5,000 steps, then relaxed linearly so that dmax reaches 5 at 25,000
// steps and rmax reaches 3 at 40,000. scaled(f) multiplies the three marks,
// e.g. by run_steps / 50,000 to fit a shorter run.
struct RenormSchedule {
  double hold = 5000, dmax_at = 25000, rmax_at = 40000;
  double rmax = 3.0, dmax = 5.0;

  RenormLimits at(int64_t step) const {
    const auto ramp = [&](double end_step) {
      if (double(step) <= hold) return 0.0;
      if (double(step) >= end_step) return 1.0;
      return (double(step) - hold) / (end_step - hold);
    };
    return {1.0 + (rmax - 1.0) * ramp(rmax_at), dmax * ramp(dmax_at)};
  }
  RenormSchedule scaled(double f) const { return {hold * f, dmax_at * f, rmax_at * f, rmax, dmax}; }
};

// save_mean, save_invstd, r, d: c outputs each, any may be null.
template <class T>
void batch_renorm_forward_training(const Shape& shape, const T* x, const param_t<T>* weight,
                                   const param_t<T>* bias, T* y, param_t<T>* save_mean,
                                   param_t<T>* save_invstd, param_t<T>* r, param_t<T>* d,
                                   param_t<T>* running_mean, param_t<T>* running_var,
                                   const RenormLimits& limits, const Options& options = {});

// Gradients with r and d held constant; r and d as forward returned them.
template <class T>
void batch_renorm_backward(const Shape& shape, const T* dy, const T* x, const param_t<T>* weight,
                           const param_t<T>* save_mean, const param_t<T>* save_invstd,
                           const param_t<T>* r, const param_t<T>* d, T* dx, param_t<T>* dweight,
                           param_t<T>* dbias);

// ---- Ghost batch norm (Hoffer, Hubara and Soudry, 2017) --------------------
//
// The batch is split into consecutive groups of virtual_batch_size samples
// (the last group may be smaller; it must still hold more than one value per
// channel) and each group is normalized with its own statistics. The running
// statistics are updated once per group, in order: exactly forward_training
// applied to the groups one after another (with momentum = nullopt, group g
// counts as batch num_batches_tracked + g). In both layouts a group is a
// contiguous slice of the tensor, since n is the outermost dimension.
// save_mean/save_invstd hold groups * c values, group after group, where
// groups = ghost_groups(shape.n, virtual_batch_size). virtual_batch_size >= n
// is batch norm. Requires virtual_batch_size >= 2, and the last group's
// m = n_last * s > 1.
int64_t ghost_groups(int64_t n, int64_t virtual_batch_size);

template <class T>
void ghost_forward_training(const Shape& shape, int64_t virtual_batch_size, const T* x,
                            const param_t<T>* weight, const param_t<T>* bias, T* y,
                            param_t<T>* save_mean, param_t<T>* save_invstd,
                            param_t<T>* running_mean, param_t<T>* running_var,
                            const Options& options = {});

// Backward group by group; dweight and dbias are the sums over the groups.
template <class T>
void ghost_backward(const Shape& shape, int64_t virtual_batch_size, const T* dy, const T* x,
                    const param_t<T>* weight, const param_t<T>* save_mean,
                    const param_t<T>* save_invstd, T* dx, param_t<T>* dweight, param_t<T>* dbias);

// What every batch-norm layer keeps, whether it normalizes over one
// process's batch (BatchNorm) or over all ranks' batches together
// (mpi::SyncBatchNorm): gamma, beta, the running statistics and the batch
// counter, the train/eval switch, and what the last forward cached for
// backward. The layers differ only in how they compute the batch statistics
// and the gradient through them; the rest of a step is here, once.
template <class T>
class BatchNormState {
 public:
  using param_type = param_t<T>;  // weights, statistics and their gradients

  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool training() const { return training_; }

  // Options::unbiased_running_var for the running-statistics updates.
  void set_unbiased_running_var(bool on) { unbiased_running_var_ = on; }
  bool unbiased_running_var() const { return unbiased_running_var_; }

  struct Gradients {
    std::vector<T> dx;
    std::vector<param_type> dweight;  // empty when the layer is not affine
    std::vector<param_type> dbias;
  };

  int64_t num_features() const { return c_; }
  double eps() const { return eps_; }
  std::optional<double> momentum() const { return momentum_; }
  bool affine() const { return affine_; }
  bool tracks_running_stats() const { return track_; }
  int64_t num_batches_tracked() const { return num_batches_tracked_; }
  std::span<param_type> weight() { return weight_; }  // empty when not affine
  std::span<param_type> bias() { return bias_; }
  std::span<param_type> running_mean() { return running_mean_; }  // empty when not tracked
  std::span<param_type> running_var() { return running_var_; }
  std::span<const param_type> weight() const { return weight_; }
  std::span<const param_type> bias() const { return bias_; }
  std::span<const param_type> running_mean() const { return running_mean_; }
  std::span<const param_type> running_var() const { return running_var_; }

 protected:
  // Validates the settings; errors name the layer `fn`.
  BatchNormState(const char* fn, int64_t num_features, double eps, std::optional<double> momentum,
                 bool affine, bool track_running_stats);
  // Protected: the state is only ever a part of a layer, never deleted on its own.
  ~BatchNormState() = default;
  BatchNormState(const BatchNormState&) = default;
  BatchNormState(BatchNormState&&) = default;
  BatchNormState& operator=(const BatchNormState&) = default;
  BatchNormState& operator=(BatchNormState&&) = default;

  // One forward's buffers and settings. `groups` sets of statistics (ghost
  // batch norm normalizes each group of samples with its own).
  struct Step {
    bool batch_statistics;  // training, or eval without running statistics
    Options options;        // for the running-statistics update of this step
    const param_type* weight;
    const param_type* bias;
    param_type* running_mean;  // null unless this step updates them
    param_type* running_var;
    std::vector<T> y;
    std::vector<param_type> mean, invstd;
  };
  Step begin_step(size_t numel, int64_t groups);
  // Eval with running statistics: y, and the mean and invstd backward uses.
  void normalize_with_running_stats(const Shape& shape, std::span<const T> x, Step& step) const;
  // Counts the batches the step's update averaged in, caches the step for
  // backward and returns y. Call only once the step has succeeded.
  std::vector<T> finish_step(const Shape& shape, std::span<const T> x, Step&& step, int64_t groups);

  // Input checks that need no collective; `fn` names the caller.
  void check_features(const char* fn, const Shape& shape, size_t x_size) const;
  void check_gradient(const char* fn, size_t dy_size) const;

  // What backward needs from the last forward.
  struct Cache {
    bool valid = false;
    bool batch_statistics = false;  // normalized with batch statistics
    Shape shape{};
    std::vector<T> x;
    std::vector<param_type> mean, invstd;
  };
  const Cache& cache() const { return cache_; }
  // dx for dy's size; dweight and dbias when affine.
  Gradients gradient_buffers(size_t numel) const;
  // The cached eval step's gradient: mean and invstd are constants.
  void backward_through_running_stats(std::span<const T> dy, Gradients& g) const;
  static param_type* data_or_null(std::vector<param_type>& v) {
    return v.empty() ? nullptr : v.data();
  }

 private:
  int64_t c_;
  double eps_;
  std::optional<double> momentum_;
  bool affine_;
  bool track_;
  bool training_ = true;
  bool unbiased_running_var_ = true;
  int64_t num_batches_tracked_ = 0;
  std::vector<param_type> weight_, bias_, running_mean_, running_var_;
  Cache cache_;
};

// The layer as a network uses it: owns gamma, beta, the running statistics
// and the batch counter, switches between train() and eval(), and caches in
// forward what backward needs.
template <class T>
class BatchNorm : public BatchNormState<T> {
 public:
  using typename BatchNormState<T>::param_type;
  using typename BatchNormState<T>::Gradients;

  // momentum = nullopt: cumulative moving average of the running statistics.
  explicit BatchNorm(int64_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1,
                     bool affine = true, bool track_running_stats = true);

  // Ghost batch norm in training mode (ghost_forward_training); 0, the
  // default, normalizes over the whole batch. num_batches_tracked then
  // counts groups. Throws std::invalid_argument for 1 or a negative size.
  void set_virtual_batch_size(int64_t virtual_batch_size);
  int64_t virtual_batch_size() const { return virtual_batch_size_; }

  // y for x of the given shape (shape.c must equal num_features). In training
  // mode, uses and updates batch statistics; in eval mode, the running ones
  // (or batch statistics when running statistics are not tracked, as
  // PyTorch does).
  std::vector<T> forward(const Shape& shape, std::span<const T> x);

  // Gradients for dy of the shape of the last forward. In training mode the
  // gradient flows through the batch mean and variance.
  Gradients backward(std::span<const T> dy) const;

 private:
  int64_t virtual_batch_size_ = 0;
  int64_t cache_virtual_batch_size_ = 0;  // the groups of the last forward, 0: none
};

#define BNORM_EXTERN(T, ...) extern template class BatchNormState<T>;
BNORM_FOR_EACH_TYPE(BNORM_EXTERN)
#undef BNORM_EXTERN
#define BNORM_EXTERN(T, ...) extern template class BatchNorm<T>;
BNORM_FOR_EACH_TYPE(BNORM_EXTERN)
#undef BNORM_EXTERN

}  // namespace bnorm
