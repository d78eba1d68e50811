// The demo's first table: the layer's fast paths against the reference, the
// reference and a whole network against finite differences.
#include <fmt/core.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/reference.hpp>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "experiments.hpp"

namespace bnorm::demo {
namespace ref = bnorm::reference;
namespace {

std::vector<double> normals(size_t n, train::Rng& rng, double mean = 0, double sd = 1) {
  std::vector<double> v(n);
  for (double& e : v) e = mean + sd * rng.normal();
  return v;
}

template <class T>
std::pair<double, double> fast_vs_reference(const Shape& shape, const std::vector<double>& x,
                                            const std::vector<double>& dy,
                                            const std::vector<double>& w,
                                            const std::vector<double>& b) {
  const std::vector<T> xt(x.begin(), x.end()), dyt(dy.begin(), dy.end()), wt(w.begin(), w.end()),
      bt(b.begin(), b.end());
  const std::vector<double> xr(xt.begin(), xt.end()), dyr(dyt.begin(), dyt.end()),
      wr(wt.begin(), wt.end()), br(bt.begin(), bt.end());
  const size_t c = size_t(shape.c);
  std::vector<T> y(x.size()), mean(c), invstd(c), dx(x.size());
  forward_training<T>(shape, xt.data(), wt.data(), bt.data(), y.data(), mean.data(), invstd.data(),
                      nullptr, nullptr);
  backward<T>(shape, dyt.data(), xt.data(), wt.data(), mean.data(), invstd.data(), dx.data(),
              nullptr, nullptr);
  const auto f = ref::forward_training(shape, xr, wr, br, 1e-5);
  const auto g = ref::backward(ref::Method::staged, shape, dyr, xr, wr, 1e-5);
  return {ref::max_scaled_error(std::vector<double>(y.begin(), y.end()), f.y),
          ref::dx_error(shape, std::vector<double>(dx.begin(), dx.end()), g.dx, dyr, wr, f.invstd)};
}

// Every parameter of a tiny double network (linear, batch norm, sigmoid,
// linear, cross-entropy) against central finite differences of the loss.
double network_gradient_error() {
  NetConfig cfg;
  cfg.sizes = {6, 5, 4};
  cfg.norm = Norm::batchnorm;
  cfg.activation = Activation::sigmoid;
  cfg.init_std = 0.7;
  cfg.seed = 5;
  Network<double> net(cfg);
  train::Rng rng(9);
  Matrix<double> x(8, 6);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.normal();
  const std::vector<uint8_t> labels = {0, 1, 2, 3, 0, 1, 2, 3};
  // Random gamma and beta so that the check does not sit at gamma = 1.
  for (auto& p : net.params())
    for (int64_t i = 0; i < p.size; ++i) p.value[i] += 0.3 * rng.normal();
  auto loss = [&] {
    return train::softmax_cross_entropy<double>(net.forward(x), labels.data(), nullptr, nullptr);
  };
  Matrix<double> dlogits;
  train::softmax_cross_entropy<double>(net.forward(x), labels.data(), &dlogits, nullptr);
  net.backward(dlogits);
  double num = 0, den = 0;
  for (auto& p : net.params()) {
    const std::vector<double> grad(p.grad, p.grad + p.size);
    for (int64_t i = 0; i < p.size; ++i) {
      const double keep = p.value[i], h = 1e-6;
      p.value[i] = keep + h;
      const double up = loss();
      p.value[i] = keep - h;
      const double down = loss();
      p.value[i] = keep;
      num = std::max(num, std::abs(grad[size_t(i)] - (up - down) / (2 * h)));
      den = std::max(den, std::abs(grad[size_t(i)]));
    }
  }
  return num / den;
}

}  // namespace

std::vector<CheckRow> gradient_check(Output& out) {
  fmt::print("Gradient check of the layer and of a whole network\n");
  train::Rng rng(2024);
  double fy = 0, fdx = 0, dy_ = 0, ddx = 0, fd = 0;
  const Shape shapes[] = {{4, 3, 1, Layout::NCHW},
                          {8, 5, 7, Layout::NCHW},
                          {6, 4, 9, Layout::NHWC},
                          {60, 100, 1, Layout::NCHW}};
  for (const Shape& s : shapes) {
    const auto x = normals(size_t(s.numel()), rng, 0.5, 2.0);
    const auto dy = normals(size_t(s.numel()), rng);
    const auto w = normals(size_t(s.c), rng, 1.0, 0.5), b = normals(size_t(s.c), rng);
    auto [e1, e2] = fast_vs_reference<float>(s, x, dy, w, b);
    auto [e3, e4] = fast_vs_reference<double>(s, x, dy, w, b);
    fy = std::max(fy, e1);
    fdx = std::max(fdx, e2);
    dy_ = std::max(dy_, e3);
    ddx = std::max(ddx, e4);
    if (s.numel() <= 300) {
      const auto g = ref::backward(ref::Method::staged, s, dy, x, w, 1e-5);
      const auto n = ref::finite_differences(s, dy, x, w, b, 1e-5);
      fd = std::max({fd, ref::max_scaled_error(g.dx, n.dx),
                     ref::max_scaled_error(g.dweight, n.dweight),
                     ref::max_scaled_error(g.dbias, n.dbias)});
    }
  }
  std::vector<CheckRow> rows = {
      {"layer, fast float32 vs reference: y", fy, 1e-6},
      {"layer, fast float32 vs reference: dx", fdx, 1e-6},
      {"layer, fast float64 vs reference: y", dy_, 1e-13},
      {"layer, fast float64 vs reference: dx", ddx, 1e-13},
      {"layer, reference vs finite differences", fd, 1e-6},
      {"network (linear+BN+sigmoid+CE), float64 vs finite differences", network_gradient_error(),
       1e-6},
  };
  out.add(
      "## Gradient check\n\n| check | max scaled error | tolerance | result "
      "|\n|---|---|---|---|\n");
  for (const auto& r : rows) {
    fmt::print("  {:<64} {:9.2e}  (tol {:.0e})  {}\n", r.what, r.error, r.tolerance,
               r.ok() ? "ok" : "FAIL");
    out.add("| {} | {:.2e} | {:.0e} | {} |\n", r.what, r.error, r.tolerance,
            r.ok() ? "ok" : "**FAIL**");
  }
  out.add(
      "\nShapes (n, c, s): (4,3,1), (8,5,7) NCHW, (6,4,9) NHWC, (60,100,1); the network is "
      "6-5-4 with batch norm on its hidden layer, 8 examples, every weight, bias, gamma and beta "
      "perturbed by +-1e-6. `bnorm gradcheck` runs the full sweep.\n\n");
  fmt::print("\n");
  return rows;
}

}  // namespace bnorm::demo
