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
                              MPI_Comm comm, const Shape& local, const T* x, const T* weight,
                              const T* bias, T* y, T* save_mean, T* save_invstd, T* running_mean,
                              T* running_var, const Options& options,
                              const RenormLimits* renorm = nullptr, T* r = nullptr, T* d = nullptr);

template <class T>
void backward_checked(const char* fn, const std::function<void()>& extra_check, MPI_Comm comm,
                      const Shape& local, const T* dy, const T* x, const T* weight,
                      const T* save_mean, const T* save_invstd, T* dx, T* dweight, T* dbias,
                      const T* r = nullptr, const T* d = nullptr);

}  // namespace bnorm::mpi
