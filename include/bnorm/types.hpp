// The values every bnorm call describes its tensors and settings with: the
// layout, the shape (n, c, s) and the options of the statistics. The
// kernels see these and the element types (dtypes.hpp), never the layer
// classes of bnorm.hpp.
#pragma once

#include <cstdint>
#include <optional>

#include "dtypes.hpp"

namespace bnorm {

// NCHW: channels first; element (i, k, j) sits at (i * c + k) * s + j.
// NHWC: channels last;  element (i, k, j) sits at (i * s + j) * c + k.
enum class Layout { NCHW, NHWC };

// n: batch size; c: channels; s: product of the spatial dimensions (1 for a
// 2-D (n, c) input). The per-channel reduction runs over m = n * s values.
struct Shape {
  int64_t n = 1;
  int64_t c = 1;
  int64_t s = 1;
  Layout layout = Layout::NCHW;

  int64_t numel() const { return n * c * s; }
  int64_t m() const { return n * s; }
};

// The activation a fused layer applies after batch norm (+ residual):
// bnorm/fused.hpp.
enum class Activation { identity, relu, leaky_relu };

struct Options {
  double eps = 1e-5;
  // Weight of the current batch in the running statistics; nullopt selects the
  // cumulative average, which needs num_batches_tracked below.
  std::optional<double> momentum = 0.1;
  // Batches seen including this one (>= 1); read only when momentum is nullopt
  // and running statistics are tracked.
  int64_t num_batches_tracked = 0;
  // The variance the running variance averages: true, the unbiased
  // var * m / (m - 1) (PyTorch, cuDNN); false, the batch variance var (ONNX,
  // Flax, Keras). Normalization always uses the biased var.
  bool unbiased_running_var = true;
};

}  // namespace bnorm
