// A consumer of the installed package that links bnorm::bnorm alone: one
// training step of the layer, checked against per-channel mean and biased
// variance computed here in double.
#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const int64_t n = 4, c = 3, hw = 5;
  const bnorm::Shape shape{n, c, hw, bnorm::Layout::NCHW};
  std::vector<float> x(size_t(n * c * hw));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(std::cos(double(i) * 0.7) * 2.0 + 0.5);
  bnorm::BatchNorm<float> layer(c);
  const std::vector<float> y = layer.forward(shape, x);

  const double eps = 1e-5;
  double err = 0;
  for (int64_t k = 0; k < c; ++k) {
    const auto at = [&](int64_t i, int64_t s) { return size_t((i * c + k) * hw + s); };
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t s = 0; s < hw; ++s) mean += x[at(i, s)];
    mean /= double(n * hw);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t s = 0; s < hw; ++s) var += (x[at(i, s)] - mean) * (x[at(i, s)] - mean);
    var /= double(n * hw);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t s = 0; s < hw; ++s)
        err = std::max(err, std::abs(y[at(i, s)] - (x[at(i, s)] - mean) / std::sqrt(var + eps)));
  }
  std::printf("downstream (bnorm::bnorm alone): max |y - double| = %.3g\n", err);
  return err < 1e-5 ? 0 : 1;
}
