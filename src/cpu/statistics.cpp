#include <type_traits>
#include <vector>

#include "fast.hpp"
#include "kernels.hpp"

namespace bnorm::cpu {

template <class T>
void moments(const Shape& shape, const T* x, double* mean, double* var) {
  if constexpr (std::is_same_v<T, float>) {
    moments_f32(shape, x, mean, var);
    return;
  }
  const int64_t n = shape.n, c = shape.c, s = shape.s;
  const double m = double(shape.m());
  if (shape.layout == Layout::NCHW) {
    for (int64_t k = 0; k < c; ++k) {
      double sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        const T* row = x + (i * c + k) * s;
        for (int64_t j = 0; j < s; ++j) sum += double(row[j]);
      }
      const double mu = sum / m;
      double sq = 0;
      for (int64_t i = 0; i < n; ++i) {
        const T* row = x + (i * c + k) * s;
        for (int64_t j = 0; j < s; ++j) {
          const double d = double(row[j]) - mu;
          sq += d * d;
        }
      }
      mean[k] = mu;
      var[k] = sq / m;
    }
    return;
  }
  // NHWC: rows of c contiguous values; accumulate all channels at once.
  std::vector<double> sum(static_cast<size_t>(c), 0.0), sq(static_cast<size_t>(c), 0.0);
  const int64_t rows = n * s;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * c;
    for (int64_t k = 0; k < c; ++k) sum[size_t(k)] += double(row[k]);
  }
  for (int64_t k = 0; k < c; ++k) mean[k] = sum[size_t(k)] / m;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * c;
    for (int64_t k = 0; k < c; ++k) {
      const double d = double(row[k]) - mean[k];
      sq[size_t(k)] += d * d;
    }
  }
  for (int64_t k = 0; k < c; ++k) var[k] = sq[size_t(k)] / m;
}

template void moments<float>(const Shape&, const float*, double*, double*);
template void moments<double>(const Shape&, const double*, double*, double*);

}  // namespace bnorm::cpu
