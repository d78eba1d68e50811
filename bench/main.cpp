// bnorm_bench: bnorm against oneDNN and PyTorch, on the same data, in one
// process (bench.hpp says how the turns go and where each part lives).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "rows.hpp"

using namespace bench;

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      cfg.quick = true;
    } else if (a == "--markdown" && i + 1 < argc) {
      cfg.markdown = argv[++i];
    } else if (a == "--threads" && i + 1 < argc) {
      cfg.threads.clear();
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) cfg.threads.push_back(std::stoi(t));
    } else if (a == "--shape" && i + 1 < argc) {
      Dims d{};
      if (std::sscanf(argv[++i], "%ld,%ld,%ld,%ld", &d.n, &d.c, &d.h, &d.w) != 4 || d.n < 1 ||
          d.c < 1 || d.h < 1 || d.w < 1 || d.n * d.c * d.h * d.w < 2) {
        std::fprintf(stderr, "--shape: expected n,c,h,w (positive), got %s\n", argv[i]);
        return 2;
      }
      cfg.shapes.push_back(d);
    } else if (a == "--dtype" && i + 1 < argc) {
      cfg.dtypes.clear();
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) {
        if (t == "f32") {
          cfg.dtypes.push_back(DType::f32);
        } else if (t == "f64") {
          cfg.dtypes.push_back(DType::f64);
        } else if (t == "bf16") {
          cfg.dtypes.push_back(DType::bf16);
        } else if (t == "f16") {
          cfg.dtypes.push_back(DType::f16);
        } else {
          std::fprintf(stderr, "--dtype: expected f32, f64, bf16 or f16, got %s\n", t.c_str());
          return 2;
        }
      }
    } else if (a == "--ops" && i + 1 < argc) {
      cfg.ops.clear();
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) {
        const Op* op =
            std::find_if(std::begin(kOps), std::end(kOps), [&](Op o) { return t == op_name(o); });
        if (op == std::end(kOps)) {
          std::fprintf(stderr,
                       "--ops: expected fwd-train, fwd-infer, bwd, relu-fwd, relu-bwd, "
                       "add-relu-fwd or add-relu-bwd, got %s\n",
                       t.c_str());
          return 2;
        }
        cfg.ops.push_back(*op);
      }
    } else if (a == "--reps" && i + 1 < argc) {
      cfg.reps = std::stoi(argv[++i]);
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--quick] [--markdown FILE] [--threads 1,2] [--reps N] [--shape n,c,h,w]...\n"
          "          [--dtype f32,f64,bf16,f16] [--ops fwd-train,fwd-infer,bwd]\n"
          "ops: fwd-train fwd-infer bwd (batch norm), relu-fwd relu-bwd add-relu-fwd\n"
          "     add-relu-bwd (fused BN+ReLU and BN+add+ReLU, training)\n"
          "unknown argument: %s\n",
          argv[0], a.c_str());
      return 2;
    }
  }
  for (int t : cfg.threads)
    if (t < 1) {
      std::fprintf(stderr, "--threads: counts must be >= 1, got %d\n", t);
      return 2;
    }
  const int reps = cfg.reps > 0 ? cfg.reps : cfg.quick ? 3 : 15;

  std::vector<Impl> impls{bnorm_impl()};
#ifdef BNORM_BENCH_DNNL
  impls.push_back(dnnl_impl());
#endif
#ifdef BNORM_BENCH_TORCH
  impls.push_back(torch_impl());
#endif

  const std::vector<Row> rows = measure(cfg, reps, impls);
  const std::string table = markdown_table(rows, impls);
  std::fputs(table.c_str(), stdout);
  if (!cfg.markdown.empty()) {
    std::ofstream f(cfg.markdown);
    f << table;
    if (!f) {
      std::fprintf(stderr, "--markdown: cannot write %s\n", cfg.markdown.c_str());
      return 1;
    }
  }
  return 0;
}
