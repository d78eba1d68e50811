// The markdown table: medians, ratios to the anchors, bnorm's bandwidth under
// the byte model against the STREAM copy, and per dtype a summary.
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "rows.hpp"

namespace bench {
namespace {

std::string fmt(const char* f, double v) {
  if (std::isnan(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

std::string markdown_table(const std::vector<Row>& rows, const std::vector<Impl>& impls) {
  std::map<std::string, double> f32_ms;  // bnorm's f32 time of each case
  for (const Row& r : rows)
    if (r.dtype == DType::f32) f32_ms[r.key()] = r.ms[0];
  std::ostringstream out;
  out << "Byte model: fwd-train 3x, fwd-infer 2x, bwd 5x the tensor's bytes in the row's dtype; "
         "fused (bnorm's): relu-fwd 3x, add-relu-fwd 4x, relu-bwd 7x, add-relu-bwd 7x. Fused "
         "rows: oneDNN is its fuse_norm_relu (no add+ReLU fusion: n/a), PyTorch its unfused "
         "native_batch_norm, add_, relu_ (backward threshold_backward, "
         "native_batch_norm_backward). "
         "GB/s = model bytes / bnorm's median time; % STREAM = that over the STREAM copy "
         "bandwidth measured in the same turns (2 x bytes copied). Gelem/s = tensor elements / "
         "bnorm's median time; vs f32 = bnorm's f32 time of the same case, timed in the same "
         "turns, "
         "/ this row's (elements per second over bnorm's own f32).\n"
         "Speed-up = other's median ms / bnorm's; best = the faster of the others that run the "
         "dtype (n/a: cannot).\n\n";
  out << "| shape | layout | dtype | op | thr | cache |";
  for (auto& impl : impls) out << " " << impl.name << " ms |";
  for (size_t i = 1; i < impls.size(); ++i) out << " vs " << impls[i].name << " |";
  if (impls.size() > 1) out << " vs best |";
  out << " bnorm GB/s | Gelem/s | vs f32 | STREAM GB/s | % STREAM |\n|";
  const size_t cols = 12 + impls.size() + (impls.size() - 1) + (impls.size() > 1 ? 1 : 0);
  for (size_t i = 0; i < cols; ++i) out << "---|";
  out << "\n";
  struct Summary {
    std::map<std::string, std::vector<double>> logs;  // by cache state, and "all"
    int behind = 0, rows = 0;
    double worst = INFINITY;
    std::string worst_row;
    std::vector<double> vs_f32, vs_f32_big;  // logs of elements/s over bnorm's f32
  };
  std::map<DType, Summary> sums;
  for (const Row& r : rows) {
    Summary& sum = sums[r.dtype];
    ++sum.rows;
    out << "| " << r.shape << " | " << r.layout << " | " << dtype_name(r.dtype) << " | " << r.op
        << " | " << r.threads << " | " << r.cache << " |";
    for (double ms : r.ms) out << " " << fmt("%.3f", ms) << " |";
    double best = NAN;
    for (size_t i = 1; i < r.ms.size(); ++i) {
      out << " " << fmt("%.2fx", r.ms[i] / r.ms[0]) << " |";
      if (!std::isnan(r.ms[i])) best = std::isnan(best) ? r.ms[i] : std::min(best, r.ms[i]);
    }
    if (impls.size() > 1) {
      const double speedup = best / r.ms[0];
      out << " " << fmt("%.2fx", speedup) << " |";
      if (!std::isnan(speedup)) {
        sum.logs[r.cache].push_back(std::log(speedup));
        sum.logs["all"].push_back(std::log(speedup));
        if (speedup < 1) ++sum.behind;
        if (speedup < sum.worst) {
          sum.worst = speedup;
          sum.worst_row = r.shape + " " + r.layout + " " + r.op + " " + std::to_string(r.threads) +
                          "T " + r.cache;
        }
      }
    }
    const double gbs = r.bytes / (r.ms[0] * 1e-3) / 1e9;
    double vs_f32 = NAN;
    if (r.dtype != DType::f32 && (std::isfinite(r.f32_ms) || f32_ms.count(r.key()))) {
      vs_f32 = (std::isfinite(r.f32_ms) ? r.f32_ms : f32_ms[r.key()]) / r.ms[0];
      sum.vs_f32.push_back(std::log(vs_f32));
      if (r.shape == "(16,128,112,112)") sum.vs_f32_big.push_back(std::log(vs_f32));
    }
    out << " " << fmt("%.1f", gbs) << " | " << fmt("%.2f", r.numel / (r.ms[0] * 1e-3) / 1e9)
        << " | " << fmt("%.2fx", vs_f32) << " | " << fmt("%.1f", r.stream_gbs) << " | "
        << fmt("%.0f%%", 100 * gbs / r.stream_gbs) << " |\n";
  }
  out << "\n";
  const auto geomean = [](const std::vector<double>& logs) {
    double t = 0;
    for (double l : logs) t += l;
    return logs.empty() ? NAN : std::exp(t / double(logs.size()));
  };
  for (auto& [dtype, sum] : sums) {
    const std::string name = dtype_name(dtype);
    for (auto& [key, v] : sum.logs)
      out << name << ": geometric-mean speed-up over the faster anchor (" << key << " rows, "
          << v.size() << "): " << fmt("%.2fx", geomean(v)) << "\n";
    if (!sum.logs.empty())
      out << name << ": rows where bnorm is behind the faster anchor: " << sum.behind << " of "
          << sum.logs["all"].size() << "; slowest row: " << sum.worst_row << " at "
          << fmt("%.2fx", sum.worst) << "\n";
    else if (impls.size() > 1)
      out << name << ": no anchor runs this dtype\n";
    if (!sum.vs_f32.empty())
      out << name << ": elements/s over bnorm's f32, geometric mean over " << sum.vs_f32.size()
          << " rows: " << fmt("%.2fx", geomean(sum.vs_f32))
          << "; on (16,128,112,112): " << fmt("%.2fx", geomean(sum.vs_f32_big)) << "\n";
  }
  out << "Anchors built in:";
  for (size_t i = 1; i < impls.size(); ++i) out << " " << impls[i].name;
  if (impls.size() == 1) out << " none (bnorm alone)";
  out << "\n";
  return out.str();
}

}  // namespace bench
