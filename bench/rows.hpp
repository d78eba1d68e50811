// The rows of the table: the options that choose them, the turns that time
// each one (rows.cpp), and the markdown table with its summary (table.cpp).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "bench.hpp"

namespace bench {

struct Config {
  bool quick = false;
  std::string markdown;
  std::vector<int> threads{1, 2};
  int reps = 0;
  std::vector<Dims> shapes;  // empty: the standard list
  std::vector<DType> dtypes{DType::f32};
  std::vector<Op> ops{Op::fwd_train, Op::fwd_infer, Op::bwd};
};

struct Row {
  std::string shape, layout, op, cache;
  int threads;
  std::vector<double> ms;  // per implementation, NaN if not run
  double stream_gbs, bytes;
  DType dtype = DType::f32;
  double numel = 0;
  double f32_ms = NAN;       // bnorm's f32 on the same case in the same turns (other dtypes)
  std::string key() const {  // the row of the same case in another dtype
    return shape + layout + op + cache + std::to_string(threads);
  }
};

// Every (shape, layout, dtype, op, threads, cache state) row of cfg, reps
// turns each, impls[0] being bnorm; a line per row on stderr as it ends.
std::vector<Row> measure(const Config& cfg, int reps, std::vector<Impl>& impls);

// The markdown table of the rows, then per dtype the geometric-mean speed-ups
// and the slowest row, and the anchors built in.
std::string markdown_table(const std::vector<Row>& rows, const std::vector<Impl>& impls);

}  // namespace bench
