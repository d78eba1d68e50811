#include <bnorm/mpi.hpp>
#include <string>
#include <vector>

#include "mpi/sync_impl.hpp"
#include "validate.hpp"

namespace bnorm::mpi {
namespace {

// Runs before the shared state's own checks, so that a null communicator is
// the error reported whatever else is wrong.
const char* checked_name(MPI_Comm comm) {
  constexpr const char* fn = "mpi::SyncBatchNorm";
  if (comm == MPI_COMM_NULL) detail::fail(fn, "comm must not be MPI_COMM_NULL");
  return fn;
}

}  // namespace

template <class T>
SyncBatchNorm<T>::SyncBatchNorm(MPI_Comm comm, int64_t num_features, double eps,
                                std::optional<double> momentum, bool affine,
                                bool track_running_stats)
    : BatchNormState<T>(checked_name(comm), num_features, eps, momentum, affine,
                        track_running_stats),
      comm_(comm) {}

template <class T>
std::vector<T> SyncBatchNorm<T>::forward(const Shape& shape, std::span<const T> x) {
  constexpr const char* fn = "mpi::SyncBatchNorm::forward";
  // Run inside the synchronized pass before its first collective, so that a
  // rank whose input does not fit the layer fails on every rank.
  const auto check = [&] { this->check_features(fn, shape, x.size()); };
  auto step = this->begin_step(x.size(), 1);
  if (step.batch_statistics) {
    forward_training_checked(fn, check, comm_, shape, x.data(), step.weight, step.bias,
                             step.y.data(), step.mean.data(), step.invstd.data(), step.running_mean,
                             step.running_var, step.options);
  } else {
    // Rank-local: no collective to leave waiting.
    check();
    detail::check_local_shape(fn, shape);
    this->normalize_with_running_stats(shape, x, step);
  }
  return this->finish_step(shape, x, std::move(step), 1);
}

template <class T>
typename SyncBatchNorm<T>::Gradients SyncBatchNorm<T>::backward(std::span<const T> dy) const {
  constexpr const char* fn = "mpi::SyncBatchNorm::backward";
  const auto check = [&] { this->check_gradient(fn, dy.size()); };
  const auto& cache = this->cache();
  Gradients g = this->gradient_buffers(dy.size());
  if (cache.valid && !cache.batch_statistics) {
    check();
    this->backward_through_running_stats(dy, g);
    return g;
  }
  // Before any forward the cache is empty; the synchronized pass still joins
  // the pre-flight so that the error reaches every rank.
  const std::vector<param_type> none(size_t(this->num_features()));
  const auto& mean = cache.valid ? cache.mean : none;
  const auto& invstd = cache.valid ? cache.invstd : none;
  backward_checked(fn, check, comm_, cache.shape, dy.data(), cache.x.data(),
                   this->affine() ? this->weight().data() : nullptr, mean.data(), invstd.data(),
                   g.dx.data(), this->data_or_null(g.dweight), this->data_or_null(g.dbias));
  return g;
}

#define BNORM_INSTANTIATE(T, ...) template class SyncBatchNorm<T>;
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm::mpi
