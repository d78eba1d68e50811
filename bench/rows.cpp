// The turns that time one row: every implementation (and bnorm's float32
// twin for other dtypes) with the STREAM copy, rotating who goes first.
#include "rows.hpp"

#include <omp.h>

#include <cstdio>
#include <functional>
#include <optional>

#include "bandwidth.hpp"

namespace bench {

std::vector<Row> measure(const Config& cfg, int reps, std::vector<Impl>& impls) {
  const std::vector<Dims> shapes =
      !cfg.shapes.empty() ? cfg.shapes
      : cfg.quick         ? std::vector<Dims>{{8, 64, 28, 28}, {256, 512, 1, 1}}
                          : std::vector<Dims>{{32, 64, 56, 56},  {32, 256, 14, 14}, {64, 512, 7, 7},
                                              {8, 32, 128, 128}, {256, 2048, 1, 1}, {16, 128, 112, 112}};
  const size_t big = cfg.quick ? (size_t(8) << 20) : (size_t(24) << 20);  // floats
  Stream stream(big);
  Sweep sweep(big);

  std::vector<Row> rows;
  for (const Dims& dims : shapes)
    for (auto layout : {bnorm::Layout::NCHW, bnorm::Layout::NHWC}) {
      // Rows of another dtype also time bnorm's float32 on the same case,
      // in the same turns: their "vs f32" then compares times the
      // machine's drift hit alike (rows of separate passes differed by up
      // to 1.5x on this shared machine).
      std::optional<Data> f32_data;
      for (DType dtype : cfg.dtypes) {
        Data data(dims, layout, dtype);
        const bool twin = dtype != DType::f32;
        if (twin && !f32_data) f32_data.emplace(dims, layout, DType::f32);
        const std::string shape_name = "(" + std::to_string(dims.n) + "," + std::to_string(dims.c) +
                                       "," + std::to_string(dims.h) + "," + std::to_string(dims.w) +
                                       ")";
        for (Op op : cfg.ops) {
          for (int threads : cfg.threads) {
            omp_set_num_threads(threads);
            for (auto& impl : impls) impl.set_threads(threads);
            // After the thread count is set: oneDNN fixes its thread count when
            // it creates a primitive.
            std::vector<std::optional<std::function<void()>>> fns;
            for (auto& impl : impls) fns.push_back(impl.make(data, op));
            if (twin) fns.push_back(impls[0].make(*f32_data, op));
            for (bool cold : {false, true}) {
              std::vector<std::vector<double>> times(fns.size());
              std::vector<double> copies;
              for (auto& f : fns)
                if (f) (*f)();  // warm-up (first-touch, primitive caches)
              for (int r = 0; r < reps; ++r) {
                copies.push_back(stream.run(threads));
                for (size_t j = 0; j < fns.size(); ++j) {
                  const size_t i = (j + size_t(r)) % fns.size();  // rotate who goes first
                  if (!fns[i]) continue;
                  if (cold) {
                    sweep.run();
                  } else {
                    (*fns[i])();  // back-to-back: the previous call warmed the caches
                  }
                  const auto t0 = Clock::now();
                  (*fns[i])();
                  times[i].push_back(seconds_since(t0) * 1e3);
                }
              }
              Row row{shape_name,
                      layout == bnorm::Layout::NCHW ? "NCHW" : "NHWC",
                      op_name(op),
                      cold ? "cold" : "warm",
                      threads,
                      {},
                      stream.bytes() / median(copies) / 1e9,
                      data.bytes() * byte_factor(op),
                      dtype,
                      double(data.shape.numel())};
              for (size_t i = 0; i < impls.size(); ++i) row.ms.push_back(median(times[i]));
              if (twin) row.f32_ms = median(times.back());
              rows.push_back(row);
              std::fprintf(stderr, "%s %s %s %s %dT %s: bnorm %.3f ms\n", row.shape.c_str(),
                           row.layout.c_str(), dtype_name(dtype), row.op.c_str(), threads,
                           row.cache.c_str(), row.ms[0]);
            }
          }
        }
      }
    }
  return rows;
}

}  // namespace bench
