#include <bnorm/bnorm.hpp>
#include <cmath>
#include <stdexcept>
#include <string>

#include "validate.hpp"

namespace bnorm {

template <class T>
BatchNorm<T>::BatchNorm(int64_t num_features, double eps, std::optional<double> momentum,
                        bool affine, bool track_running_stats)
    : c_(num_features),
      eps_(eps),
      momentum_(momentum),
      affine_(affine),
      track_(track_running_stats) {
  constexpr const char* fn = "BatchNorm";
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
void BatchNorm<T>::set_virtual_batch_size(int64_t virtual_batch_size) {
  if (virtual_batch_size != 0 && virtual_batch_size < 2)
    detail::fail("BatchNorm::set_virtual_batch_size",
                 "virtual_batch_size must be 0 (the whole batch) or >= 2, got " +
                     std::to_string(virtual_batch_size));
  virtual_batch_size_ = virtual_batch_size;
}

template <class T>
std::vector<T> BatchNorm<T>::forward(const Shape& shape, std::span<const T> x) {
  constexpr const char* fn = "BatchNorm::forward";
  detail::check_shape(fn, shape);
  if (shape.c != c_)
    detail::fail(fn, "shape.c is " + std::to_string(shape.c) + " but the layer has " +
                         std::to_string(c_) + " features");
  if (int64_t(x.size()) != shape.numel())
    detail::fail(fn, "x has " + std::to_string(x.size()) + " values, the shape needs " +
                         std::to_string(shape.numel()));
  const param_type* w = affine_ ? weight_.data() : nullptr;
  const param_type* b = affine_ ? bias_.data() : nullptr;
  std::vector<T> y(x.size());
  const bool batch_stats = training_ || !track_;
  // Checked here too, so that the error names the layer rather than the
  // kernel it calls.
  if (batch_stats && shape.m() < 2)
    detail::fail(fn, "expected more than 1 value per channel with batch statistics, got n*s = " +
                         std::to_string(shape.m()));
  // Ghost batch norm in training mode: statistics per group of samples.
  const int64_t vbs = training_ ? virtual_batch_size_ : 0;
  const int64_t groups = vbs > 0 ? ghost_groups(shape.n, vbs) : 1;
  std::vector<param_type> mean(size_t(groups * c_)), invstd(size_t(groups * c_));
  if (batch_stats) {
    const bool update = training_ && track_;
    Options options{eps_, momentum_, num_batches_tracked_ + 1};
    options.unbiased_running_var = unbiased_running_var_;
    param_type* rm = update ? running_mean_.data() : nullptr;
    param_type* rv = update ? running_var_.data() : nullptr;
    if (vbs > 0)
      ghost_forward_training(shape, vbs, x.data(), w, b, y.data(), mean.data(), invstd.data(), rm,
                             rv, options);
    else
      forward_training(shape, x.data(), w, b, y.data(), mean.data(), invstd.data(), rm, rv,
                       options);
    if (update) num_batches_tracked_ += groups;
  } else {
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
  cache_virtual_batch_size_ = vbs;
  have_cache_ = true;
  return y;
}

template <class T>
typename BatchNorm<T>::Gradients BatchNorm<T>::backward(std::span<const T> dy) const {
  constexpr const char* fn = "BatchNorm::backward";
  if (!have_cache_) detail::fail(fn, "called before forward");
  if (int64_t(dy.size()) != shape_.numel())
    detail::fail(fn, "dy has " + std::to_string(dy.size()) + " values, the last forward had " +
                         std::to_string(shape_.numel()));
  Gradients g;
  g.dx.resize(dy.size());
  if (affine_) {
    g.dweight.resize(static_cast<size_t>(c_));
    g.dbias.resize(static_cast<size_t>(c_));
  }
  param_type* dw = affine_ ? g.dweight.data() : nullptr;
  param_type* db = affine_ ? g.dbias.data() : nullptr;
  const param_type* w = affine_ ? weight_.data() : nullptr;
  if (cache_virtual_batch_size_ > 0)
    ghost_backward(shape_, cache_virtual_batch_size_, dy.data(), x_.data(), w, mean_.data(),
                   invstd_.data(), g.dx.data(), dw, db);
  else if (cache_batch_stats_)
    bnorm::backward(shape_, dy.data(), x_.data(), w, mean_.data(), invstd_.data(), g.dx.data(), dw,
                    db);
  else
    backward_frozen_moments(shape_, dy.data(), x_.data(), w, mean_.data(), invstd_.data(),
                            g.dx.data(), dw, db);
  return g;
}

template class BatchNorm<float>;
template class BatchNorm<double>;
template class BatchNorm<bfloat16>;
template class BatchNorm<float16>;

}  // namespace bnorm
