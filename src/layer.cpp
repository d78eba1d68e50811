#include <bnorm/bnorm.hpp>
#include <cmath>
#include <stdexcept>
#include <string>

#include "validate.hpp"

namespace bnorm {

template <class T>
BatchNormState<T>::BatchNormState(const char* fn, int64_t num_features, double eps,
                                  std::optional<double> momentum, bool affine,
                                  bool track_running_stats)
    : c_(num_features),
      eps_(eps),
      momentum_(momentum),
      affine_(affine),
      track_(track_running_stats) {
  if (num_features < 1)
    detail::fail(fn, "num_features must be >= 1, got " + std::to_string(num_features));
  detail::check_eps(fn, eps);
  detail::check_momentum(fn, momentum);
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
void BatchNormState<T>::check_features(const char* fn, const Shape& shape, size_t x_size) const {
  if (shape.c != c_)
    detail::fail(fn, "shape.c is " + std::to_string(shape.c) + " but the layer has " +
                         std::to_string(c_) + " features");
  // Only a shape the kernels would accept has a meaningful (and non-
  // overflowing) numel; the rest is the shape check's to report.
  if (shape.n >= 0 && shape.s >= 1 && int64_t(x_size) != shape.numel())
    detail::fail(fn, "x has " + std::to_string(x_size) + " values, the shape needs " +
                         std::to_string(shape.numel()));
}

template <class T>
void BatchNormState<T>::check_gradient(const char* fn, size_t dy_size) const {
  if (!cache_.valid) detail::fail(fn, "called before forward");
  if (int64_t(dy_size) != cache_.shape.numel())
    detail::fail(fn, "dy has " + std::to_string(dy_size) + " values, the last forward had " +
                         std::to_string(cache_.shape.numel()));
}

template <class T>
typename BatchNormState<T>::Step BatchNormState<T>::begin_step(size_t numel, int64_t groups) {
  const bool batch_statistics = training_ || !track_;
  const bool update = training_ && track_;
  Step step{batch_statistics,
            Options{eps_, momentum_, num_batches_tracked_ + 1},
            affine_ ? weight_.data() : nullptr,
            affine_ ? bias_.data() : nullptr,
            update ? running_mean_.data() : nullptr,
            update ? running_var_.data() : nullptr,
            std::vector<T>(numel),
            std::vector<param_type>(size_t(groups * c_)),
            std::vector<param_type>(size_t(groups * c_))};
  step.options.unbiased_running_var = unbiased_running_var_;
  return step;
}

template <class T>
void BatchNormState<T>::normalize_with_running_stats(const Shape& shape, std::span<const T> x,
                                                     Step& step) const {
  // A rank of a synchronized layer may hold no samples; the kernel wants n >= 1.
  if (shape.n != 0)
    forward_inference(shape, x.data(), step.weight, step.bias, running_mean_.data(),
                      running_var_.data(), step.y.data(), eps_);
  for (size_t k = 0; k < size_t(c_); ++k) {
    step.mean[k] = running_mean_[k];
    step.invstd[k] = param_type(detail::invstd_of(double(running_var_[k]), eps_));
  }
}

template <class T>
std::vector<T> BatchNormState<T>::finish_step(const Shape& shape, std::span<const T> x, Step&& step,
                                              int64_t groups) {
  if (step.running_mean != nullptr) num_batches_tracked_ += groups;
  cache_.valid = true;
  cache_.batch_statistics = step.batch_statistics;
  cache_.shape = shape;
  cache_.x.assign(x.begin(), x.end());
  cache_.mean = std::move(step.mean);
  cache_.invstd = std::move(step.invstd);
  return std::move(step.y);
}

template <class T>
typename BatchNormState<T>::Gradients BatchNormState<T>::gradient_buffers(size_t numel) const {
  Gradients g;
  g.dx.resize(numel);
  if (affine_) {
    g.dweight.resize(size_t(c_));
    g.dbias.resize(size_t(c_));
  }
  return g;
}

template <class T>
void BatchNormState<T>::backward_through_running_stats(std::span<const T> dy, Gradients& g) const {
  // A rank of a synchronized layer may hold no samples: dx is empty and
  // dweight, dbias are sums over nothing, the zeros they hold already.
  if (cache_.shape.n == 0) return;
  backward_frozen_moments(cache_.shape, dy.data(), cache_.x.data(),
                          affine_ ? weight_.data() : nullptr, cache_.mean.data(),
                          cache_.invstd.data(), g.dx.data(), data_or_null(g.dweight),
                          data_or_null(g.dbias));
}

template <class T>
BatchNorm<T>::BatchNorm(int64_t num_features, double eps, std::optional<double> momentum,
                        bool affine, bool track_running_stats)
    : BatchNormState<T>("BatchNorm", num_features, eps, momentum, affine, track_running_stats) {}

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
  this->check_features(fn, shape, x.size());
  // Ghost batch norm in training mode: statistics per group of samples.
  const int64_t vbs = this->training() ? virtual_batch_size_ : 0;
  const int64_t groups = vbs > 0 ? ghost_groups(shape.n, vbs) : 1;
  auto step = this->begin_step(x.size(), groups);
  // Checked here too, so that the error names the layer rather than the
  // kernel it calls.
  if (step.batch_statistics && shape.m() < 2)
    detail::fail(fn, "expected more than 1 value per channel with batch statistics, got n*s = " +
                         std::to_string(shape.m()));
  if (!step.batch_statistics)
    this->normalize_with_running_stats(shape, x, step);
  else if (vbs > 0)
    ghost_forward_training(shape, vbs, x.data(), step.weight, step.bias, step.y.data(),
                           step.mean.data(), step.invstd.data(), step.running_mean,
                           step.running_var, step.options);
  else
    forward_training(shape, x.data(), step.weight, step.bias, step.y.data(), step.mean.data(),
                     step.invstd.data(), step.running_mean, step.running_var, step.options);
  cache_virtual_batch_size_ = vbs;
  return this->finish_step(shape, x, std::move(step), groups);
}

template <class T>
typename BatchNorm<T>::Gradients BatchNorm<T>::backward(std::span<const T> dy) const {
  this->check_gradient("BatchNorm::backward", dy.size());
  const auto& cache = this->cache();
  Gradients g = this->gradient_buffers(dy.size());
  const param_type* w = this->affine() ? this->weight().data() : nullptr;
  param_type* dw = this->data_or_null(g.dweight);
  param_type* db = this->data_or_null(g.dbias);
  if (!cache.batch_statistics)
    this->backward_through_running_stats(dy, g);
  else if (cache_virtual_batch_size_ > 0)
    ghost_backward(cache.shape, cache_virtual_batch_size_, dy.data(), cache.x.data(), w,
                   cache.mean.data(), cache.invstd.data(), g.dx.data(), dw, db);
  else
    bnorm::backward(cache.shape, dy.data(), cache.x.data(), w, cache.mean.data(),
                    cache.invstd.data(), g.dx.data(), dw, db);
  return g;
}

#define BNORM_INSTANTIATE(T, ...) template class BatchNormState<T>;
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE
#define BNORM_INSTANTIATE(T, ...) template class BatchNorm<T>;
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm
