// Work units, thresholds and buffers of the fast path, shared by its
// translation units (fast_statistics.cpp, fast_normalize.cpp,
// fast_forward.cpp, fast_backward.cpp). Nothing here depends on the SIMD
// target: a unit is fixed by the shape and the element size alone, which is
// what makes the results independent of the thread count. Sizes are in
// bytes of the element type (bytes = sizeof(T)).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels.hpp"

namespace bnorm::cpu {

// A unit that reads at most this much stays in cache between its passes.
constexpr int64_t kFuseBytes = int64_t(2) << 20;
// Target size of a unit that is merged with others afterwards.
constexpr int64_t kUnitBytes = int64_t(256) << 10;
// Below this many bytes per tensor, threads cost more than they save.
constexpr int64_t kMinParallelBytes = int64_t(256) << 10;
// Outputs beyond this are streamed past the caches (x, y and more no longer
// fit the 32 MiB L3 together).
constexpr int64_t kStreamBytes = int64_t(12) << 20;

// NCHW (s > 1) work units: channel k, samples [g * group, (g + 1) * group).
struct NchwPlan {
  int64_t group = 1;
  int64_t groups = 1;
  bool whole_channel() const { return groups == 1; }
};

// tensors: how many inputs a unit reads (1 forward, 2 backward).
inline NchwPlan nchw_plan(const Shape& shape, int64_t tensors, int64_t bytes) {
  const int64_t plane_bytes = shape.s * bytes * tensors;
  NchwPlan p;
  if (shape.n * plane_bytes <= kFuseBytes) {
    p.group = shape.n;
  } else {
    p.group = std::max<int64_t>(1, kUnitBytes / plane_bytes);
  }
  p.groups = (shape.n + p.group - 1) / p.group;
  return p;
}

// Row units (NHWC and 2-D): a multiple of the flush interval, about kUnitBytes.
constexpr int64_t kFlushRows = 32;
inline int64_t rows_per_unit(int64_t c, int64_t bytes) {
  const int64_t rows = kUnitBytes / (c * bytes);
  return std::max<int64_t>(kFlushRows, rows / kFlushRows * kFlushRows);
}

// Rows layouts with few rows: a unit can be a block of channels over all the
// rows (at most 64 channels, 256 bytes a row, times the inputs it reads) and
// still fit kFuseBytes, so each channel's statistics and its y (or dx) come
// out of one unit, as for NCHW channels.
inline bool column_units(const Shape& shape, int64_t tensors) {
  return shape.m() * 256 * tensors <= 2 * kFuseBytes;
}

// Rows of this many bytes or more: the training forward's column units
// compute only the statistics down the columns, and y goes row by row; the
// backward takes row units throughout. Down a column block every row of
// 4 KiB or more is a new page, and already at 1 and 2 KiB the hardware
// prefetchers lose the strided walk: the column normalize loop waited on its
// loads ((64,512,7,7) NHWC, perf annotate), and the row pass made the
// training forward 1.2x faster there and 1.1x on (32,256,14,14), the
// backward 1.15x and 1.18x (one thread, minimum, taking turns). Row units
// for the backward's sums as well gained another 1.03x to 1.23x on the same
// shapes (both versions in one process, taking turns); for the forward's
// statistics they did not (0.90x to 1.11x).
constexpr int64_t kRowSplitBytes = 1024;

inline bool rows_layout(const Shape& shape) { return shape.layout == Layout::NHWC || shape.s == 1; }

inline int threads_for(const Shape& shape, int64_t bytes) {
  return shape.numel() * bytes >= kMinParallelBytes ? thread_count() : 1;
}

// Chunk of a dynamic loop over NCHW channels (or their units): runs of
// neighbouring channels go to one thread. In NCHW, channel k's plane i ends
// in the cache line where channel k + 1's begins (a 7x7 plane is 196 bytes),
// so handing out single channels made the threads write the same lines at
// every plane's ends: 64x512x7x7 ran slower on 2 threads than on 1. About
// four chunks a thread keep the load balanced.
inline int64_t channel_chunk(int64_t units, int nt) {
  return std::max<int64_t>(1, units / (4 * int64_t(nt)));
}

// Only when the output rows (NHWC) or planes (NCHW) all start on a 64-byte
// boundary: peeling scalar heads off every row would cost more than the
// read-for-ownership saves.
template <class T>
inline bool stream_output(const Shape& shape, const T* out) {
  const int64_t run = rows_layout(shape) ? shape.c : shape.s;
  return shape.numel() * int64_t(sizeof(T)) >= kStreamBytes &&
         reinterpret_cast<uintptr_t>(out) % 64 == 0 && run % 16 == 0;
}

// Per-thread buffers that outlive the call: fresh pages for partial results
// on every call would cost more than the work on small shapes. Slot tells
// apart the buffers one thread needs at once.
template <class T, int Slot>
inline T* scratch(int64_t count) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < size_t(count)) buffer.resize(size_t(count));
  return buffer.data();
}

// Count, mean and sum of squared deviations of one unit, merged with Chan's

// Rows of the pilot mean: all of a short unit (an exact two-pass, whose float
// partial sums then see no cancellation), else kFlushRows rows, which bounds
// the cancellation by rows / kFlushRows and typically keeps it near 1.
inline int64_t pilot_rows(int64_t rows) { return rows <= 16 * kFlushRows ? rows : kFlushRows; }

// formula.
struct Moments {
  double count = 0, mean = 0, m2 = 0;
};
inline Moments merge(const Moments& a, const Moments& b) {
  if (a.count == 0) return b;
  const double count = a.count + b.count, delta = b.mean - a.mean;
  return {count, a.mean + delta * (b.count / count),
          a.m2 + b.m2 + delta * delta * (a.count * b.count / count)};
}

}  // namespace bnorm::cpu

// BNORM_FOR_EACH_TYPE (bnorm/dtypes.hpp) instantiates, exports and
// dispatches the kernels, one Suffix each.

// In a template on T (HWY_ONCE part of a fast_*.cpp): calls the dispatched
// Name##Suffix for T. (Token pasting needs the suffixes written out; the
// static_assert stops a type added to the list from reaching a kernel
// without its case here.)
#define BNORM_DISPATCH(Name, ...)                                \
  do {                                                           \
    static_assert(::bnorm::kDTypeCount == 4);                    \
    if constexpr (std::is_same_v<T, float>) {                    \
      HWY_DYNAMIC_DISPATCH(Name##F32)(__VA_ARGS__);              \
    } else if constexpr (std::is_same_v<T, double>) {            \
      HWY_DYNAMIC_DISPATCH(Name##F64)(__VA_ARGS__);              \
    } else if constexpr (std::is_same_v<T, ::bnorm::bfloat16>) { \
      HWY_DYNAMIC_DISPATCH(Name##BF16)(__VA_ARGS__);             \
    } else {                                                     \
      static_assert(std::is_same_v<T, ::bnorm::float16>);        \
      HWY_DYNAMIC_DISPATCH(Name##F16)(__VA_ARGS__);              \
    }                                                            \
  } while (0)
