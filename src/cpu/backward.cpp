#include <algorithm>
#include <type_traits>
#include <vector>

#include "fast.hpp"
#include "kernels.hpp"

namespace bnorm::cpu {

template <class T>
void backward_reduce(const Shape& shape, const T* dy, const T* x, const double* mean,
                     double* sum_dy, double* sum_dy_xmu) {
  const int64_t n = shape.n, c = shape.c, s = shape.s;
  if constexpr (std::is_same_v<T, float>) {
    std::vector<float> mu(static_cast<size_t>(c));
    for (int64_t k = 0; k < c; ++k) mu[size_t(k)] = float(mean[k]);
    backward_reduce_f32(shape, dy, x, mu.data(), sum_dy, sum_dy_xmu);
    // sum dy * (x - mean) = sum dy * (x - mu) - (mean - mu) * sum dy
    for (int64_t k = 0; k < c; ++k) sum_dy_xmu[k] -= (mean[k] - double(mu[size_t(k)])) * sum_dy[k];
    return;
  }
  std::fill(sum_dy, sum_dy + c, 0.0);
  std::fill(sum_dy_xmu, sum_dy_xmu + c, 0.0);
  if (shape.layout == Layout::NCHW) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < c; ++k) {
        const int64_t base = (i * c + k) * s;
        double a = 0, b = 0;
        for (int64_t j = 0; j < s; ++j) {
          const double g = double(dy[base + j]);
          a += g;
          b += g * (double(x[base + j]) - mean[k]);
        }
        sum_dy[k] += a;
        sum_dy_xmu[k] += b;
      }
    return;
  }
  const int64_t rows = n * s;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * c;
    const T* gr = dy + r * c;
    for (int64_t k = 0; k < c; ++k) {
      const double g = double(gr[k]);
      sum_dy[k] += g;
      sum_dy_xmu[k] += g * (double(xr[k]) - mean[k]);
    }
  }
}

template <class T>
void backward_dx(const Shape& shape, const T* dy, const T* x, const double* mean, const double* a,
                 const double* b, const double* c_, T* dx) {
  const int64_t n = shape.n, c = shape.c, s = shape.s;
  if constexpr (std::is_same_v<T, float>) {
    std::vector<float> mu(static_cast<size_t>(c)), af(static_cast<size_t>(c)),
        bf(static_cast<size_t>(c)), cf(static_cast<size_t>(c));
    for (int64_t k = 0; k < c; ++k) {
      const size_t kk = size_t(k);
      mu[kk] = float(mean[k]);
      af[kk] = float(a[k]);
      bf[kk] = float(b[k]);
      cf[kk] = float(c_[k] + b[k] * (double(mu[kk]) - mean[k]));
    }
    backward_dx_f32(shape, dy, x, mu.data(), af.data(), bf.data(), cf.data(), dx);
    return;
  }
  if (shape.layout == Layout::NCHW) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < c; ++k) {
        const int64_t base = (i * c + k) * s;
        for (int64_t j = 0; j < s; ++j)
          dx[base + j] =
              T(a[k] * double(dy[base + j]) + b[k] * (double(x[base + j]) - mean[k]) + c_[k]);
      }
    return;
  }
  const int64_t rows = n * s;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * c;
    for (int64_t k = 0; k < c; ++k)
      dx[base + k] =
          T(a[k] * double(dy[base + k]) + b[k] * (double(x[base + k]) - mean[k]) + c_[k]);
  }
}

template void backward_reduce<float>(const Shape&, const float*, const float*, const double*,
                                     double*, double*);
template void backward_reduce<double>(const Shape&, const double*, const double*, const double*,
                                      double*, double*);
template void backward_dx<float>(const Shape&, const float*, const float*, const double*,
                                 const double*, const double*, const double*, float*);
template void backward_dx<double>(const Shape&, const double*, const double*, const double*,
                                  const double*, const double*, const double*, double*);

}  // namespace bnorm::cpu
