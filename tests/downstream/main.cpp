// A consumer of the installed package: one training step, checked against
// the reference that ships with it.
#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/reference.hpp>
#include <cmath>
#include <cstdio>

int main() {
  const bnorm::Shape shape{4, 2, 3, bnorm::Layout::NHWC};
  std::vector<float> x(24);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(double(i)) * 3.0);
  bnorm::BatchNorm<float> layer(2);
  const std::vector<float> y = layer.forward(shape, x);
  const auto want = bnorm::reference::forward_training(
      shape, std::vector<double>(x.begin(), x.end()), {}, {}, 1e-5);
  double err = 0;
  for (size_t i = 0; i < y.size(); ++i) err = std::max(err, std::abs(y[i] - want.y[i]));
  std::printf("downstream: max |y - reference| = %.3g\n", err);

  // bfloat16 activations, float parameters: y within one rounding of
  // bfloat16 (2^-8 relative) of the reference on the rounded input.
  std::vector<bnorm::bfloat16> xb(x.size());
  std::vector<double> xr(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    xb[i] = bnorm::bfloat16(x[i]);
    xr[i] = double(float(xb[i]));
  }
  bnorm::BatchNorm<bnorm::bfloat16> layer16(2);
  const std::vector<bnorm::bfloat16> yb = layer16.forward(shape, xb);
  const auto want16 = bnorm::reference::forward_training(shape, xr, {}, {}, 1e-5);
  double ratio = 0;
  for (size_t i = 0; i < yb.size(); ++i)
    ratio = std::max(ratio, std::abs(double(float(yb[i])) - want16.y[i]) /
                                (0x1p-8 * std::abs(want16.y[i]) + 1e-5));
  std::printf("downstream: bfloat16 max |y - reference| / (2^-8 |reference| + 1e-5) = %.3g\n",
              ratio);
  return err < 1e-5 && ratio <= 1 ? 0 : 1;
}
