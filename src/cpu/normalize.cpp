#include <type_traits>
#include <vector>

#include "fast.hpp"
#include "kernels.hpp"

namespace bnorm::cpu {

template <class T>
void normalize(const Shape& shape, const T* x, const double* mean, const double* scale,
               const double* shift, T* y) {
  const int64_t n = shape.n, c = shape.c, s = shape.s;
  if constexpr (std::is_same_v<T, float>) {
    // x - mu in float stays exact near the mean; shift takes mean - mu.
    std::vector<float> mu(static_cast<size_t>(c)), a(static_cast<size_t>(c)),
        b(static_cast<size_t>(c));
    for (int64_t k = 0; k < c; ++k) {
      mu[size_t(k)] = float(mean[k]);
      a[size_t(k)] = float(scale[k]);
      b[size_t(k)] = float(shift[k] - (mean[k] - double(mu[size_t(k)])) * scale[k]);
    }
    normalize_f32(shape, x, mu.data(), a.data(), b.data(), y);
    return;
  }
  if (shape.layout == Layout::NCHW) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < c; ++k) {
        const int64_t base = (i * c + k) * s;
        const double mu = mean[k], a = scale[k], b = shift[k];
        for (int64_t j = 0; j < s; ++j) y[base + j] = T((double(x[base + j]) - mu) * a + b);
      }
    return;
  }
  const int64_t rows = n * s;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * c;
    T* yr = y + r * c;
    for (int64_t k = 0; k < c; ++k) yr[k] = T((double(xr[k]) - mean[k]) * scale[k] + shift[k]);
  }
}

template void normalize<float>(const Shape&, const float*, const double*, const double*,
                               const double*, float*);
template void normalize<double>(const Shape&, const double*, const double*, const double*,
                                const double*, double*);

}  // namespace bnorm::cpu
