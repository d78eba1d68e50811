// The report's last section: the accuracies reached here beside the published
// Fashion-MNIST baselines shipped in the Debian package.
#include <fmt/core.h>
#include <zlib.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/reference.hpp>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "experiments.hpp"

namespace bnorm::demo {
namespace ref = bnorm::reference;
namespace {

std::string read_gz(const fs::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return {};
  std::string s;
  char buf[4096];
  int got;
  while ((got = gzread(f, buf, sizeof buf)) > 0) s.append(buf, size_t(got));
  gzclose(f);
  return s;
}

}  // namespace

void baselines(Output& out, const Finals& finals) {
  const fs::path doc = "/usr/share/doc/dataset-fashion-mnist";
  out.add("## Comparison with the published Fashion-MNIST baselines\n\n");
  std::ifstream json_file(doc / "benchmark/baselines.json");
  std::stringstream json;
  json << json_file.rdbuf();
  const std::string j = json.str();
  if (j.empty()) {
    out.add("`{}` is not installed.\n\n", (doc / "benchmark/baselines.json").string());
  } else {
    const auto at = j.find("\"MLPClassifier\"");
    std::string mlp;
    const auto hl = j.find("\"hidden_layer_sizes\"", at == std::string::npos ? 0 : at);
    if (at != std::string::npos && hl != std::string::npos) {
      const auto open = j.find('[', hl), close = j.find(']', hl);
      for (char ch : j.substr(open + 1, close - open - 1))
        if (ch != '\n' && ch != ' ') mlp += ch;
    }
    out.add(
        "The Debian package's `benchmark/baselines.json` holds the *configuration* of the "
        "data set's scikit-learn benchmark (the classifiers and their parameter grids, e.g. "
        "MLPClassifier with hidden_layer_sizes {}), not accuracies. The accuracies the package "
        "ships are the submitted results in its `README.md.gz`; the rows for fully connected "
        "networks and the human baseline:\n\n",
        mlp.empty() ? "(not found)" : mlp);
  }
  std::istringstream readme(read_gz(doc / "README.md.gz"));
  std::string line;
  std::vector<double> published;  // MLP first, then the human baseline, as in the table
  out.add("| published | Fashion test accuracy |\n|---|---|\n");
  while (std::getline(readme, line)) {
    if (line.rfind("|MLP", 0) != 0 && line.rfind("|Human", 0) != 0) continue;
    std::vector<std::string> cells;
    std::string cell;
    std::istringstream ls(line.substr(1));
    while (std::getline(ls, cell, '|')) cells.push_back(cell);
    if (cells.size() >= 3) {
      published.push_back(std::atof(cells[2].c_str()));
      auto trim = [](std::string s) {
        s.erase(0, s.find_first_not_of(' '));
        s.erase(s.find_last_not_of(' ') + 1);
        return s;
      };
      out.add("| {} | {} |\n", trim(cells[0]), trim(cells[2]));
    }
  }
  out.add("\n| this report (10,000 test images) | test accuracy |\n|---|---|\n");
  for (const auto& [name, acc] : finals) out.add("| {} | {} |\n", name, pct(acc));
  auto best = finals.front();
  for (const auto& f : finals)
    if (f.second > best.second) best = f;
  out.add("\nBest here: **{}** ({}).", pct(best.second), best.first);
  if (published.size() >= 2)
    out.add(
        " That is {:+.2f} points against the published 256-128-100 MLP ({}) and {:+.2f} "
        "points against the human baseline ({}).",
        100 * (best.second - published[0]), pct(published[0]), 100 * (best.second - published[1]),
        pct(published[1]));
  out.add(
      " The networks here are smaller (3x100) and the short configuration trains each for a "
      "few epochs at most; `--full` trains the paper's network for 50,000 steps (50 epochs).\n\n");
}

}  // namespace bnorm::demo
