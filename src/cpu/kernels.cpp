// The double-parameter interface of kernels.hpp over the dispatched fast
// kernels, for every element type. Parameters are rounded to P = param_t<T>
// with the rounding of the mean folded into the shift (or c) terms, so that
// x - mu stays exact near the mean.
#include "kernels.hpp"

#include <vector>

#include "fast_plan.hpp"

namespace bnorm::cpu {

template <class T>
void moments(const Shape& shape, const T* x, double* mean, double* var) {
  moments_fast(shape, x, mean, var);
}

template <class T>
void normalize(const Shape& shape, const T* x, const double* mean, const double* scale,
               const double* shift, T* y) {
  using P = param_t<T>;
  const size_t c = size_t(shape.c);
  std::vector<P> mu(c), a(c), b(c);
  for (size_t k = 0; k < c; ++k) {
    mu[k] = P(mean[k]);
    a[k] = P(scale[k]);
    b[k] = P(shift[k] - (mean[k] - double(mu[k])) * scale[k]);
  }
  normalize_fast(shape, x, mu.data(), a.data(), b.data(), y);
}

template <class T>
void backward_reduce(const Shape& shape, const T* dy, const T* x, const double* mean,
                     double* sum_dy, double* sum_dy_xmu) {
  using P = param_t<T>;
  const size_t c = size_t(shape.c);
  std::vector<P> mu(c);
  for (size_t k = 0; k < c; ++k) mu[k] = P(mean[k]);
  backward_reduce_fast(shape, dy, x, mu.data(), sum_dy, sum_dy_xmu);
  // sum dy * (x - mean) = sum dy * (x - mu) - (mean - mu) * sum dy
  for (size_t k = 0; k < c; ++k) sum_dy_xmu[k] -= (mean[k] - double(mu[k])) * sum_dy[k];
}

template <class T>
void backward_dx(const Shape& shape, const T* dy, const T* x, const double* mean, const double* a,
                 const double* b, const double* c_, T* dx) {
  using P = param_t<T>;
  const size_t c = size_t(shape.c);
  std::vector<P> mu(c), ap(c), bp(c), cp(c);
  for (size_t k = 0; k < c; ++k) {
    mu[k] = P(mean[k]);
    ap[k] = P(a[k]);
    bp[k] = P(b[k]);
    cp[k] = P(c_[k] + b[k] * (double(mu[k]) - mean[k]));
  }
  backward_dx_fast(shape, dy, x, mu.data(), ap.data(), bp.data(), cp.data(), dx);
}

#define BNORM_INSTANTIATE(T, S, name)                                                             \
  template void moments<T>(const Shape&, const T*, double*, double*);                             \
  template void normalize<T>(const Shape&, const T*, const double*, const double*, const double*, \
                             T*);                                                                 \
  template void backward_reduce<T>(const Shape&, const T*, const T*, const double*, double*,      \
                                   double*);                                                      \
  template void backward_dx<T>(const Shape&, const T*, const T*, const double*, const double*,    \
                               const double*, const double*, T*);
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm::cpu
