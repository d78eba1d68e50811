// What bnorm's bandwidth is measured by: the bytes each op must move, and the
// STREAM-like copy timed in the same turns (with the sweep that makes a turn
// cold).
//
// Byte model (tensor of B bytes in the row's element type): fwd-train 3B
// (read x twice, write y), fwd-infer 2B, bwd 5B (read x and dy twice, write
// dx). STREAM copy counts 2 bytes moved per byte copied, as STREAM does.
//
// Fused ops (--ops; bnorm/fused.hpp), bnorm's bytes: relu-fwd 3B (read x
// twice, write y = relu(bn(x))), add-relu-fwd 4B (and read the residual r),
// relu-bwd 7B (read dy, y (the mask) and x in the reduction and again in the
// dx pass, write dx), add-relu-bwd 7B (the reduction also writes dresidual =
// dz, which the dx pass reads with x in place of dy and y). The anchors' own
// bytes for the fused rows are given in anchor_dnnl.cpp and anchor_torch.cpp.
#pragma once

#include "bench.hpp"

namespace bench {

// bnorm's bytes moved, in tensors (see the byte model above).
double byte_factor(Op op);

// STREAM-like copy b = a over arrays far larger than L3.
struct Stream {
  Buffer a, b;
  explicit Stream(size_t floats) : a(floats), b(floats) { fill_normal(a, 9, 0, 1); }
  double run(int threads);  // seconds
  double bytes() const { return 2.0 * double(a.size) * sizeof(float); }
};

// Evicts the caches: touches a buffer larger than L3.
struct Sweep {
  Buffer buf;
  explicit Sweep(size_t floats) : buf(floats) {}
  void run();
};

}  // namespace bench
