// Internal interface of the fused kernels (src/cpu/fast_fused.cpp): the
// epilogue pass of the forward and the two backward passes with the
// activation's mask, for every element type. src/fused.cpp validates the
// arguments and computes the per-channel coefficients in double.
#pragma once

#include <bnorm/types.hpp>
#include <cstdint>

namespace bnorm::cpu {

template <class T>
struct FusedArgs {
  using P = param_t<T>;
  Shape shape{};
  Activation act = Activation::identity;
  P slope = 0;
  // Forward: y = act((x - p0) * p1 + p2 + residual).
  const T* x = nullptr;
  const T* residual = nullptr;
  T* y = nullptr;
  // Backward: dz = dy * act'(from y); g = x, or act^-1(y) when from_output.
  const T* dy = nullptr;
  const T* y_in = nullptr;
  bool from_output = false;
  // Reduction: sum_dz_k = sum dz, sum_dz_g_k = sum dz * (g - p0_k); both
  // zeroed by the caller.
  double* sum_dz = nullptr;
  double* sum_dz_g = nullptr;
  // dx = p1 * dz + p2 * (g - p0) + p3; dresidual = dz (each when non-null).
  T* dx = nullptr;
  T* dresidual = nullptr;
  // dz_out: the reduction also stores dz there; dz_in: the dx pass reads dz
  // from there instead of forming it from dy and y. Set together only where
  // dz is exact in T (relu, identity, or T = P), so dx does not change.
  T* dz_out = nullptr;
  const T* dz_in = nullptr;
  const P* p[4] = {nullptr, nullptr, nullptr, nullptr};
};

template <class T>
void fused_normalize_fast(const FusedArgs<T>& args);
template <class T>
void fused_reduce_fast(const FusedArgs<T>& args);
template <class T>
void fused_dx_fast(const FusedArgs<T>& args);

}  // namespace bnorm::cpu
