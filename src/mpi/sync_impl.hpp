// The synchronized passes (batch norm, or Batch Renormalization with renorm,
// r and d) with a caller's extra argument check, run where
// the other checks run: before the pre-flight collective, so that its failure
// is reported on every rank instead of leaving the others waiting.
#pragma once

#include <bnorm/mpi.hpp>
#include <functional>

namespace bnorm::mpi {

template <class T>
void forward_training_checked(const char* fn, const std::function<void()>& extra_check,
                              MPI_Comm comm, const Shape& local, const T* x,
                              const param_t<T>* weight, const param_t<T>* bias, T* y,
                              param_t<T>* save_mean, param_t<T>* save_invstd,
                              param_t<T>* running_mean, param_t<T>* running_var,
                              const Options& options, const RenormLimits* renorm = nullptr,
                              param_t<T>* r = nullptr, param_t<T>* d = nullptr);

template <class T>
void backward_checked(const char* fn, const std::function<void()>& extra_check, MPI_Comm comm,
                      const Shape& local, const T* dy, const T* x, const param_t<T>* weight,
                      const param_t<T>* save_mean, const param_t<T>* save_invstd, T* dx,
                      param_t<T>* dweight, param_t<T>* dbias, const param_t<T>* r = nullptr,
                      const param_t<T>* d = nullptr);

}  // namespace bnorm::mpi
