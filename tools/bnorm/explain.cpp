// bnorm explain: one channel of four values through the staged graph, node
// by node, then backward with every gradient beside its closed form, and the
// frozen-moments gradient beside the true one.
#include <fmt/core.h>
#include <fmt/ranges.h>

#include <bnorm/reference.hpp>
#include <cmath>
#include <graph.hpp>
#include <string>
#include <vector>

#include "commands.hpp"

namespace bnorm::cli {
namespace {
namespace ref = bnorm::reference;

std::string vec(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += fmt::format("{}{:9.5f}", i ? ", " : "", v[i]);
  return s + "]";
}

void invariants(const char* name, const std::vector<double>& dx, const std::vector<double>& xhat) {
  double sum = 0, dot = 0;
  for (size_t i = 0; i < dx.size(); ++i) {
    sum += dx[i];
    dot += dx[i] * xhat[i];
  }
  fmt::print("  {:<16} sum_i dx_i = {:+.3e}   sum_i dx_i * x_hat_i = {:+.3e}\n", name, sum, dot);
}

int run(const std::vector<double>& x, const std::vector<double>& dy, double gamma, double beta,
        double eps, const std::string& graph_png) {
  const auto f = ref::staged_forward(x, gamma, beta, eps);
  const auto b = ref::staged_backward(f, dy);
  if (!graph_png.empty()) {
    graph::render_png(graph::staged_graph_dot(f, b), graph_png);
    fmt::print("Wrote the graph to {}\n\n", graph_png);
  }
  const auto cf = ref::closed_form(x, dy, gamma, eps);

  fmt::print("One channel, m = {} values; gamma = {}, beta = {}, eps = {}\n\n", x.size(), gamma,
             beta, eps);
  fmt::print("Forward, node by node (the staged computational graph)\n");
  fmt::print("  x                          = {}\n", vec(f.x));
  fmt::print("  1 mean      mu = sum x / m = {:9.5f}\n", f.mu);
  fmt::print("  2 subtract  xmu = x - mu   = {}\n", vec(f.xmu));
  fmt::print("  3 square    sq = xmu^2     = {}\n", vec(f.sq));
  fmt::print("  4 variance  var = sum sq/m = {:9.5f}   (biased, 1/m)\n", f.var);
  fmt::print("  5 add eps   vareps         = {:9.5f}\n", f.vareps);
  fmt::print("  6 sqrt      sqrtvar        = {:9.5f}\n", f.sqrtvar);
  fmt::print("  7 invert    ivar           = {:9.5f}\n", f.ivar);
  fmt::print("  8 multiply  x_hat = xmu*ivar = {}\n", vec(f.xhat));
  fmt::print("  9 scale     gamma * x_hat  = {}\n", vec(f.gammax));
  fmt::print(" 10 shift     y = . + beta   = {}\n\n", vec(f.y));

  fmt::print("Backward, nodes in reverse, for dL/dy = {}\n", vec(b.dy));
  fmt::print("  {:<28} {:<44} {}\n", "gradient", "staged graph", "closed form (paper)");
  fmt::print("  {:<28} {:<44} {:.5f}\n", "dL/dbeta  (shift)", fmt::format("{:.5f}", b.dbeta),
             cf.dbeta);
  fmt::print("  {:<28} {:<44} {:.5f}\n", "dL/dgamma (scale)", fmt::format("{:.5f}", b.dgamma),
             cf.dgamma);
  fmt::print("  {:<28} {:<44} {}\n", "dL/dx_hat (scale)", vec(b.dxhat), vec(cf.dxhat));
  fmt::print("  {:<28} {:.5f}\n", "dL/divar  (multiply)", b.divar);
  fmt::print("  {:<28} {:.5f}\n", "dL/dsqrtvar (invert)", b.dsqrtvar);
  fmt::print("  {:<28} {:.5f}\n", "dL/dvareps (sqrt)", b.dvareps);
  fmt::print("  {:<28} {:<44} {:.5f}\n", "dL/dvar   (add eps)", fmt::format("{:.5f}", b.dvar),
             cf.dvar);
  fmt::print("  {:<28} {}\n", "dL/dxmu   (both paths)", vec(b.dxmu));
  fmt::print("  {:<28} {:<44} {:.5f}\n", "dL/dmu    (subtract)", fmt::format("{:.5f}", b.dmu),
             cf.dmu);
  fmt::print("  {:<28} {:<44} {}\n", "dL/dx     (mean)", vec(b.dx), vec(cf.dx));
  fmt::print("  {:<28} {:<44} {}\n\n", "dL/dx     compact form", "", vec(cf.dx_compact));

  std::vector<double> frozen(x.size());
  for (size_t i = 0; i < x.size(); ++i) frozen[i] = gamma * f.ivar * dy[i];
  fmt::print("Frozen moments (mu and var treated as constants): dx = gamma * ivar * dy\n");
  fmt::print("  true   dL/dx = {}\n", vec(b.dx));
  fmt::print("  frozen dL/dx = {}\n\n", vec(frozen));
  double dy_xhat = 0;
  for (size_t i = 0; i < x.size(); ++i) dy_xhat += dy[i] * f.xhat[i];
  fmt::print(
      "Invariants of the true gradient: a step along -dx cannot move the batch mean or\n"
      "spread, which the normalization would undo anyway. sum dx is zero; sum dx * x_hat is\n"
      "zero up to the eps term gamma*ivar*sum(dy*x_hat)*eps/(var+eps) = {:+.3e}:\n",
      gamma * f.ivar * dy_xhat * eps / f.vareps);
  invariants("true", b.dx, f.xhat);
  invariants("frozen moments", frozen, f.xhat);
  return 0;
}

}  // namespace

void register_explain(CLI::App& app, int* exit_code) {
  auto* cmd =
      app.add_subcommand("explain", "Walk one small example through the graph, node by node");
  static std::vector<double> x{1.0, 2.0, 4.0, 9.0};
  static std::vector<double> dy{0.5, -1.0, 0.25, 2.0};
  static double gamma = 1.5, beta = 0.5, eps = 1e-5;
  static std::string graph;
  cmd->add_option("--x", x, "Input values of the channel")->capture_default_str();
  cmd->add_option("--dy", dy, "Upstream gradient dL/dy")->capture_default_str();
  cmd->add_option("--gamma", gamma, "Scale")->capture_default_str();
  cmd->add_option("--beta", beta, "Shift")->capture_default_str();
  cmd->add_option("--eps", eps, "Epsilon")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--graph", graph,
                  "Also draw the staged graph with its forward values and gradients to this PNG "
                  "(Graphviz)");
  cmd->callback([exit_code] {
    if (x.size() < 2 || dy.size() != x.size())
      throw std::invalid_argument(
          "explain: need at least 2 values in --x and as many in --dy (got " +
          std::to_string(x.size()) + " and " + std::to_string(dy.size()) + ")");
    *exit_code = run(x, dy, gamma, beta, eps, graph);
  });
}

}  // namespace bnorm::cli
