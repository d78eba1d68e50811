// bnorm gradcheck: the fast path against the reference, the two derivations
// of the reference against each other, and the reference against central
// finite differences, over a sweep of shapes and both layouts.
#include <fmt/core.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/reference.hpp>
#include <cmath>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "commands.hpp"

namespace bnorm::cli {
namespace {
namespace ref = bnorm::reference;

std::vector<double> random_values(size_t count, std::mt19937_64& rng, double mean, double sd) {
  std::normal_distribution<double> dist(mean, sd);
  std::vector<double> v(count);
  for (double& e : v) e = dist(rng);
  return v;
}

double error(const std::vector<double>& a, const std::vector<double>& b) {
  return ref::max_scaled_error(a, b);
}

struct Row {
  std::string check;
  double tolerance;
  double worst = 0;
  void add(double e) { worst = std::isnan(e) || std::isnan(worst) ? NAN : std::max(worst, e); }
  bool ok() const { return !std::isnan(worst) && worst <= tolerance; }
};

template <class T>
double as_double(T v) {
  if constexpr (std::is_arithmetic_v<T>) {
    return double(v);
  } else {
    return double(float(v));  // bfloat16, float16: exact
  }
}

template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> out;
  for (const T& e : v) out.push_back(as_double(e));
  return out;
}

template <class T>
std::vector<T> narrow(const std::vector<double>& v) {
  std::vector<T> out;
  for (double e : v) out.push_back(T(e));
  return out;
}

// x, dy in T, weights and statistics in param_t<T>; the reference sees the
// rounded inputs.
template <class T>
void check_fast_path(const Shape& shape, const std::vector<double>& x0,
                     const std::vector<double>& dy0, const std::vector<double>& w0,
                     const std::vector<double>& b0, double eps, Row& y_row, Row& dx_row,
                     Row& param_row) {
  using P = param_t<T>;
  const auto x = narrow<T>(x0), dy = narrow<T>(dy0);
  const auto w = narrow<P>(w0), b = narrow<P>(b0);
  const auto xr = widen(x), dyr = widen(dy), wr = widen(w), br = widen(b);
  const size_t c = size_t(shape.c);
  std::vector<T> y(x.size()), dx(x.size());
  std::vector<P> mean(c), invstd(c), dw(c), db(c);
  Options opt;
  opt.eps = eps;
  forward_training<T>(shape, x.data(), w.data(), b.data(), y.data(), mean.data(), invstd.data(),
                      nullptr, nullptr, opt);
  backward<T>(shape, dy.data(), x.data(), w.data(), mean.data(), invstd.data(), dx.data(),
              dw.data(), db.data());
  const auto fwd = ref::forward_training(shape, xr, wr, br, eps);
  const auto g = ref::backward(ref::Method::staged, shape, dyr, xr, wr, eps);
  y_row.add(error(widen(y), fwd.y));
  dx_row.add(ref::dx_error(shape, widen(dx), g.dx, dyr, wr, fwd.invstd));
  param_row.add(std::max(error(widen(dw), g.dweight), error(widen(db), g.dbias)));
}

int run(bool quick, uint64_t seed) {
  std::vector<Shape> shapes;
  const int64_t dims[][3] = {{2, 1, 1},  {1, 3, 7},    {5, 3, 1},    {3, 5, 17}, {7, 13, 5},
                             {4, 33, 9}, {2, 2, 1025}, {32, 16, 49}, {8, 64, 1}, {16, 3, 256}};
  const size_t count = quick ? 6 : std::size(dims);
  for (Layout layout : {Layout::NCHW, Layout::NHWC})
    for (size_t i = 0; i < count; ++i)
      shapes.push_back({dims[i][0], dims[i][1], dims[i][2], layout});

  std::vector<Row> rows = {
      {"fast float32 vs reference: y", 1e-6},
      {"fast float32 vs reference: dx", 1e-6},
      {"fast float32 vs reference: dgamma, dbeta", 1e-6},
      {"fast float64 vs reference: y", 1e-13},
      {"fast float64 vs reference: dx", 1e-13},
      {"fast float64 vs reference: dgamma, dbeta", 1e-13},
      // One rounding of the 16-bit type (2^-8, 2^-11 of the value) on top
      // of the float32 computation, scaled like the other rows: by max |y|,
      // and for dx by max |gamma invstd dy|, which dx itself may exceed a few
      // times (its x_hat term); the parameter gradients are float.
      {"fast bfloat16 vs reference: y", 0x1p-8 + 1e-6},
      {"fast bfloat16 vs reference: dx", 4 * 0x1p-8 + 1e-6},
      {"fast bfloat16 vs reference: dgamma, dbeta", 1e-6},
      {"fast float16 vs reference: y", 0x1p-11 + 1e-6},
      {"fast float16 vs reference: dx", 4 * 0x1p-11 + 1e-6},
      {"fast float16 vs reference: dgamma, dbeta", 1e-6},
      {"staged vs closed form (paper): dx", 1e-13},
      {"staged vs compact form: dx", 1e-13},
      {"reference vs finite differences: dx", 1e-7},
      {"reference vs finite differences: dgamma, dbeta", 1e-7},
  };
  std::mt19937_64 rng(seed);
  const double eps = 1e-5;
  for (const Shape& shape : shapes) {
    const size_t numel = size_t(shape.numel()), c = size_t(shape.c);
    const auto x = random_values(numel, rng, 0.5, 2.0);
    const auto dy = random_values(numel, rng, 0.0, 1.0);
    const auto w = random_values(c, rng, 1.0, 0.5);
    const auto b = random_values(c, rng, 0.0, 1.0);
    check_fast_path<float>(shape, x, dy, w, b, eps, rows[0], rows[1], rows[2]);
    check_fast_path<double>(shape, x, dy, w, b, eps, rows[3], rows[4], rows[5]);
    check_fast_path<bfloat16>(shape, x, dy, w, b, eps, rows[6], rows[7], rows[8]);
    check_fast_path<float16>(shape, x, dy, w, b, eps, rows[9], rows[10], rows[11]);
    const auto invstd = ref::forward_training(shape, x, w, b, eps).invstd;
    const auto staged = ref::backward(ref::Method::staged, shape, dy, x, w, eps);
    auto dx_err = [&](const std::vector<double>& got, const std::vector<double>& want) {
      return ref::dx_error(shape, got, want, dy, w, invstd);
    };
    rows[12].add(
        dx_err(ref::backward(ref::Method::closed_form, shape, dy, x, w, eps).dx, staged.dx));
    rows[13].add(dx_err(ref::backward(ref::Method::compact, shape, dy, x, w, eps).dx, staged.dx));
    if (shape.m() <= 2048) {  // finite differences cost O(m^2) per channel
      const auto fd = ref::finite_differences(shape, dy, x, w, b, eps);
      rows[14].add(dx_err(staged.dx, fd.dx));
      rows[15].add(std::max(error(staged.dweight, fd.dweight), error(staged.dbias, fd.dbias)));
    }
  }
  fmt::print(
      "bnorm gradcheck: {} shapes (n, c, s from {}x{}x{} to {}x{}x{}), NCHW and NHWC, seed {}\n",
      shapes.size(), dims[0][0], dims[0][1], dims[0][2], dims[count - 1][0], dims[count - 1][1],
      dims[count - 1][2], seed);
  fmt::print(
      "error = max |got - want| / max |want|; for dx, / max |gamma * invstd * dy| (the size of\n"
      "the terms that cancel in dx)\n\n");
  fmt::print("{:<48} {:>12} {:>10}  {}\n", "check", "max error", "tolerance", "result");
  bool all_ok = true;
  for (const Row& r : rows) {
    fmt::print("{:<48} {:>12.3e} {:>10.0e}  {}\n", r.check, r.worst, r.tolerance,
               r.ok() ? "ok" : "FAIL");
    all_ok = all_ok && r.ok();
  }
  fmt::print("\n{}\n", all_ok ? "all checks passed" : "SOME CHECKS FAILED");
  return all_ok ? 0 : 1;
}

}  // namespace

void register_gradcheck(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand(
      "gradcheck",
      "Check the fast path and the reference against each other and finite differences");
  static bool quick = false;
  static uint64_t seed = 2015;
  cmd->add_flag("--quick", quick, "Fewer shapes");
  cmd->add_option("--seed", seed, "Random seed")->capture_default_str();
  cmd->callback([exit_code] { *exit_code = run(quick, seed); });
}

}  // namespace bnorm::cli
