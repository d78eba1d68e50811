#include "graph.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <stdexcept>
#include <vector>

namespace bnorm::graph {
namespace {

std::string values(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += fmt::format("{}{:.4g}", i ? ", " : "", v[i]);
  return s + "]";
}
std::string values(double v) { return fmt::format("{:.4g}", v); }

template <class F, class B>
std::string node(const char* id, const char* title, const F& forward, const B& grad,
                 const char* grad_name) {
  return fmt::format(
      "  {} [label=<<b>{}</b><br/><font color=\"black\">{}</font><br/>"
      "<font color=\"red\">{} = {}</font>>];\n",
      id, title, values(forward), grad_name, values(grad));
}

}  // namespace

std::string staged_graph_dot(const reference::StagedForward& f,
                             const reference::StagedBackward& b) {
  std::string dot =
      "digraph batchnorm {\n"
      "  rankdir=TB; nodesep=0.3; ranksep=0.3; node [shape=box, style=rounded, "
      "fontname=\"Helvetica\", fontsize=10];\n"
      "  edge [fontname=\"Helvetica\", fontsize=9];\n"
      "  label=<forward values in black, gradients dL/d(node) in red, for L = sum dy_i "
      "y_i with dy = " +
      values(b.dy) + ">; labelloc=t;\n";
  dot += node("x", "x (input)", f.x, b.dx, "dL/dx");
  dot += node("mu", "1 mean: mu = sum x / m", f.mu, b.dmu, "dL/dmu");
  dot += node("xmu", "2 subtract: x - mu", f.xmu, b.dxmu, "dL/dxmu");
  dot += node("sq", "3 square: xmu^2", f.sq, b.dsq, "dL/dsq");
  dot += node("var", "4 variance: sum sq / m", f.var, b.dvar, "dL/dvar");
  dot += node("vareps", "5 add eps: var + eps", f.vareps, b.dvareps, "dL/dvareps");
  dot += node("sqrtvar", "6 sqrt", f.sqrtvar, b.dsqrtvar, "dL/dsqrtvar");
  dot += node("ivar", "7 invert: 1 / sqrtvar", f.ivar, b.divar, "dL/divar");
  dot += node("xhat", "8 multiply: x_hat = xmu * ivar", f.xhat, b.dxhat, "dL/dx_hat");
  dot += node("gammax", "9 scale: gamma * x_hat", f.gammax, b.dgammax, "dL/d(gamma x_hat)");
  dot += node("y", "10 shift: y = . + beta", f.y, b.dy, "dL/dy");
  dot += node("gamma", "gamma", f.gamma, b.dgamma, "dL/dgamma");
  dot += node("beta", "beta", f.beta, b.dbeta, "dL/dbeta");
  dot +=
      "  x -> mu; x -> xmu; mu -> xmu; xmu -> sq; sq -> var; var -> vareps;\n"
      "  vareps -> sqrtvar; sqrtvar -> ivar; xmu -> xhat; ivar -> xhat;\n"
      "  xhat -> gammax; gamma -> gammax; gammax -> y; beta -> y;\n"
      "  x -> mu [style=invis];\n}\n";
  return dot;
}

void render_png(const std::string& dot, const std::filesystem::path& png) {
  const std::string command = "dot -Tpng -o '" + png.string() + "'";
  if (png.string().find('\'') != std::string::npos)
    throw std::invalid_argument("--graph: file name " + png.string() + " contains a quote");
  FILE* pipe = popen(command.c_str(), "w");
  if (!pipe) throw std::runtime_error(png.string() + ": cannot start Graphviz `dot`");
  fwrite(dot.data(), 1, dot.size(), pipe);
  const int status = pclose(pipe);
  if (status != 0)
    throw std::runtime_error(png.string() +
                             ": Graphviz `dot -Tpng` failed (is the graphviz package installed "
                             "and the folder writable?), status " +
                             std::to_string(status));
}

}  // namespace bnorm::graph
