#include <bnorm/mpi.hpp>
#include <cmath>
#include <string>

#include "mpi/sync_impl.hpp"
#include "validate.hpp"

namespace bnorm::mpi {

template <class T>
SyncBatchNorm<T>::SyncBatchNorm(MPI_Comm comm, int64_t num_features, double eps,
                                std::optional<double> momentum, bool affine,
                                bool track_running_stats)
    : comm_(comm),
      c_(num_features),
      eps_(eps),
      momentum_(momentum),
      affine_(affine),
      track_(track_running_stats) {
  constexpr const char* fn = "mpi::SyncBatchNorm";
  if (comm == MPI_COMM_NULL) detail::fail(fn, "comm must not be MPI_COMM_NULL");
  if (num_features < 1)
    detail::fail(fn, "num_features must be >= 1, got " + std::to_string(num_features));
  detail::check_eps(fn, eps);
  if (momentum && (!std::isfinite(*momentum) || *momentum < 0 || *momentum > 1))
    detail::fail(fn, "momentum must be in [0, 1], got " + std::to_string(*momentum));
  if (affine_) {
    weight_.assign(size_t(c_), param_type(1));
    bias_.assign(size_t(c_), param_type(0));
  }
  if (track_) {
    running_mean_.assign(size_t(c_), param_type(0));
    running_var_.assign(size_t(c_), param_type(1));
  }
}

template <class T>
std::vector<T> SyncBatchNorm<T>::forward(const Shape& shape, std::span<const T> x) {
  constexpr const char* fn = "mpi::SyncBatchNorm::forward";
  // Run inside the synchronized pass before its first collective, so that a
  // rank whose input does not fit the layer fails on every rank.
  const auto check = [&] {
    if (shape.c != c_)
      detail::fail(fn, "shape.c is " + std::to_string(shape.c) + " but the layer has " +
                           std::to_string(c_) + " features");
    if (shape.n >= 0 && shape.s >= 1 && int64_t(x.size()) != shape.numel())
      detail::fail(fn, "x has " + std::to_string(x.size()) + " values, the shape needs " +
                           std::to_string(shape.numel()));
  };
  const param_type* w = affine_ ? weight_.data() : nullptr;
  const param_type* b = affine_ ? bias_.data() : nullptr;
  std::vector<param_type> mean(static_cast<size_t>(c_)), invstd(static_cast<size_t>(c_));
  std::vector<T> y;
  const bool batch_stats = training_ || !track_;
  if (batch_stats) {
    y.resize(x.size());
    const bool update = training_ && track_;
    Options options{eps_, momentum_, num_batches_tracked_ + 1};
    options.unbiased_running_var = unbiased_running_var_;
    forward_training_checked(fn, check, comm_, shape, x.data(), w, b, y.data(), mean.data(),
                             invstd.data(), update ? running_mean_.data() : nullptr,
                             update ? running_var_.data() : nullptr, options);
    if (update) ++num_batches_tracked_;
  } else {
    // Rank-local: no collective to leave waiting.
    check();
    y.resize(x.size());
    // A rank may hold no samples in eval mode too; the core wants n >= 1.
    if (shape.n != 0)
      forward_inference(shape, x.data(), w, b, running_mean_.data(), running_var_.data(), y.data(),
                        eps_);
    for (int64_t k = 0; k < c_; ++k) {
      mean[size_t(k)] = running_mean_[size_t(k)];
      invstd[size_t(k)] = param_type(1.0 / std::sqrt(double(running_var_[size_t(k)]) + eps_));
    }
  }
  shape_ = shape;
  x_.assign(x.begin(), x.end());
  mean_ = std::move(mean);
  invstd_ = std::move(invstd);
  cache_batch_stats_ = batch_stats;
  have_cache_ = true;
  return y;
}

template <class T>
typename SyncBatchNorm<T>::Gradients SyncBatchNorm<T>::backward(std::span<const T> dy) const {
  constexpr const char* fn = "mpi::SyncBatchNorm::backward";
  const auto check = [&] {
    if (!have_cache_) detail::fail(fn, "called before forward");
    if (int64_t(dy.size()) != shape_.numel())
      detail::fail(fn, "dy has " + std::to_string(dy.size()) + " values, the last forward had " +
                           std::to_string(shape_.numel()));
  };
  Gradients g;
  g.dx.resize(dy.size());
  if (affine_) {
    g.dweight.resize(static_cast<size_t>(c_));
    g.dbias.resize(static_cast<size_t>(c_));
  }
  param_type* dw = affine_ ? g.dweight.data() : nullptr;
  param_type* db = affine_ ? g.dbias.data() : nullptr;
  const param_type* w = affine_ ? weight_.data() : nullptr;
  // Before any forward the cache is empty; the synchronized path still joins
  // the pre-flight so that the error reaches every rank.
  if (!have_cache_ || cache_batch_stats_) {
    const std::vector<param_type> none(static_cast<size_t>(c_));
    backward_checked(fn, check, comm_, shape_, dy.data(), x_.data(), w,
                     have_cache_ ? mean_.data() : none.data(),
                     have_cache_ ? invstd_.data() : none.data(), g.dx.data(), dw, db);
  } else {
    check();
    backward_frozen_moments(shape_, dy.data(), x_.data(), w, mean_.data(), invstd_.data(),
                            g.dx.data(), dw, db);
  }
  return g;
}

template class SyncBatchNorm<float>;
template class SyncBatchNorm<double>;
template class SyncBatchNorm<bfloat16>;
template class SyncBatchNorm<float16>;

}  // namespace bnorm::mpi
