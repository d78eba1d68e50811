// The demo's report: the markdown text, the data files and gnuplot figures
// beside it, the terminal progress bars, and the results table.
#pragma once

#include <fmt/core.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace bnorm::demo {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- terminal progress ------------------------------------------------------

// One bar per training run, redrawn in place on a terminal (stderr), silent
// otherwise; the run's summary line always goes to stdout.
class Progress {
 public:
  Progress(std::string label, int64_t total, bool tty)
      : label_(std::move(label)), total_(total), tty_(tty), start_(Clock::now()) {}
  void update(int64_t step, double loss) {
    if (!tty_) return;
    const auto now = Clock::now();
    if (step != total_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const int width = 30, filled = int(width * step / std::max<int64_t>(total_, 1));
    fmt::print(stderr, "\r  {:<40} [{}{}] {:3d}%  loss {:7.4f}  {:5.1f}s", label_,
               std::string(size_t(filled), '#'), std::string(size_t(width - filled), '.'),
               int(100 * step / std::max<int64_t>(total_, 1)), loss, seconds_since(start_));
    std::fflush(stderr);
  }
  void done(const std::string& summary) {
    if (tty_) fmt::print(stderr, "\r\033[K");
    fmt::print("  {:<40} {}  ({:.1f}s)\n", label_, summary, seconds_since(start_));
    std::fflush(stdout);
  }

 private:
  std::string label_;
  int64_t total_;
  bool tty_;
  Clock::time_point start_, last_{};
};

// ---- output: markdown, data files, gnuplot ----------------------------------

struct Output {
  fs::path dir;      // the report goes here
  fs::path figures;  // dir/experiments: plots and their data
  std::string md;
  std::vector<std::string> warnings;

  template <class... Args>
  void add(fmt::format_string<Args...> f, Args&&... args) {
    fmt::format_to(std::back_inserter(md), f, std::forward<Args>(args)...);
  }
  void write_file(const std::string& name, const std::string& text) const {
    std::ofstream out(figures / name);
    out << text;
    if (!out) throw std::runtime_error((figures / name).string() + ": cannot write");
  }
  // Writes NAME.gp (the script) and runs gnuplot, which writes NAME.png.
  void plot(const std::string& name, const std::string& script) {
    const std::string full =
        "set terminal pngcairo size 900,520 font 'Helvetica,11'\nset output '" + name +
        ".png'\nset grid\nset key outside right\n" + script;
    write_file(name + ".gp", full);
    const std::string cmd = "cd '" + figures.string() + "' && gnuplot " + name + ".gp 2>&1";
    FILE* pipe = popen(cmd.c_str(), "r");
    std::string messages;
    if (pipe) {
      char buf[256];
      while (fgets(buf, sizeof buf, pipe)) messages += buf;
    }
    const int status = pipe ? pclose(pipe) : -1;
    if (status != 0)
      warnings.push_back("gnuplot failed on " + (figures / (name + ".gp")).string() + ": " +
                         messages);
  }
};

inline std::string pct(double v) { return fmt::format("{:.2f}%", 100 * v); }

// The line under a markdown table's header: "|---|---|" for two columns.
inline std::string rule(int columns) {
  std::string r = "|";
  for (int i = 0; i < columns; ++i) r += "---|";
  return r;
}

// Final test accuracies by run, in the order they ran.
using Finals = std::vector<std::pair<std::string, double>>;

struct Summary {
  std::vector<std::pair<std::string, std::string>> rows;  // for the final table
};

}  // namespace bnorm::demo
