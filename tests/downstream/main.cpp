// A consumer of the installed package: one training step, checked against
// the reference that ships with it.
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
  return err < 1e-5 ? 0 : 1;
}
