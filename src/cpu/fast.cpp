// Float32 kernels, compiled once per x86 target by Highway's foreach_target
// and dispatched at run time (HWY_DYNAMIC_DISPATCH), threaded with OpenMP.
//
// Layouts. NCHW with s > 1: each channel is n planes of s contiguous values;
// vectors run along a plane. NHWC, and any 2-D (s = 1) input: rows of c
// contiguous values; vectors run across channels and the reduction goes down
// the rows.
//
// Passes over memory. A work unit is small enough to stay in cache (L2 plus
// the L3 that catches its victims), so the centering pass of the two-pass
// statistics and, where a unit is a whole NCHW channel, the normalize pass
// (or backward's dx pass) reread it from cache: DRAM sees x once (forward) or
// x and dy once (backward). When a unit cannot hold a whole channel (NHWC, or
// huge NCHW channels) the units' partial statistics are merged first and the
// second pass rereads x. Outputs too large to stay in cache are written with
// non-temporal stores, which skip the read-for-ownership.
//
// Numerics. Values are summed in float vector lanes for at most a few dozen
// terms, then carried in double; partial results of units are merged in
// double in unit order (Chan's formula for mean and M2), so results do not
// depend on the thread count.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/fast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// clang-format off
#include <hwy/highway.h>
#include <hwy/cache_control.h>
// clang-format on

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fast.hpp"

#ifndef BNORM_CPU_FAST_SHARED
#define BNORM_CPU_FAST_SHARED
namespace bnorm::cpu {
namespace {

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
inline NchwPlan nchw_plan(const Shape& shape, int64_t tensors) {
  const int64_t plane_bytes = shape.s * int64_t(sizeof(float)) * tensors;
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
inline int64_t rows_per_unit(int64_t c) {
  const int64_t rows = kUnitBytes / (c * int64_t(sizeof(float)));
  return std::max<int64_t>(kFlushRows, rows / kFlushRows * kFlushRows);
}

// Rows layouts with few rows: a unit can be a block of channels over all the
// rows (at most 64 channels, 256 bytes a row, times the inputs it reads) and
// still fit kFuseBytes, so each channel's statistics and its y (or dx) come
// out of one unit, as for NCHW channels.
inline bool column_units(const Shape& shape, int64_t tensors) {
  return shape.m() * 256 * tensors <= 2 * kFuseBytes;
}

inline bool rows_layout(const Shape& shape) { return shape.layout == Layout::NHWC || shape.s == 1; }

inline int threads_for(const Shape& shape) {
  return shape.numel() * int64_t(sizeof(float)) >= kMinParallelBytes ? thread_count() : 1;
}

// Only when the output rows (NHWC) or planes (NCHW) all start on a 64-byte
// boundary: peeling scalar heads off every row would cost more than the
// read-for-ownership saves.
inline bool stream_output(const Shape& shape, const float* out) {
  const int64_t run = rows_layout(shape) ? shape.c : shape.s;
  return shape.numel() * int64_t(sizeof(float)) >= kStreamBytes &&
         reinterpret_cast<uintptr_t>(out) % 64 == 0 && run % 16 == 0;
}

// Per-thread buffers that outlive the call: fresh pages for partial results
// on every call would cost more than the work on small shapes. Slot tells
// apart the buffers one thread needs at once.
template <class T, int Slot>
T* scratch(int64_t count) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < size_t(count)) buffer.resize(size_t(count));
  return buffer.data();
}

// Count, mean and sum of squared deviations of one unit, merged with Chan's
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

}  // namespace
}  // namespace bnorm::cpu
#endif  // BNORM_CPU_FAST_SHARED

HWY_BEFORE_NAMESPACE();
namespace bnorm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Contiguous elements summed in float lanes before the sum moves to double
// (at most 32 terms a lane with 16 lanes and 4 accumulators).
constexpr int64_t kBlock = 2048;

HWY_INLINE double Total(DF d, VF a0, VF a1, VF a2, VF a3) {
  return double(hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)))));
}

struct Pair {
  double first = 0, second = 0;
};

// AVX2 and AVX-512 load and store a partial vector without touching the
// lanes past the end (maskload/maskstore, masked moves); the other targets
// finish in scalar code.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
constexpr bool kMaskedTail = true;
#else
constexpr bool kMaskedTail = false;
#endif

// y = (x - mu) * scale + shift over [0, len). stream: y is vector-aligned
// (stream_output checked it).
void NormalizeSpan(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t len, float mu,
                   float scale, float shift, bool stream) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  const VF vmu = hn::Set(d, mu), va = hn::Set(d, scale), vb = hn::Set(d, shift);
  int64_t j = 0;
  if (stream) {
    for (; j + N <= len; j += N)
      hn::Stream(hn::MulAdd(hn::Sub(hn::LoadU(d, x + j), vmu), va, vb), d, y + j);
  } else {
    for (; j + N <= len; j += N)
      hn::StoreU(hn::MulAdd(hn::Sub(hn::LoadU(d, x + j), vmu), va, vb), d, y + j);
  }
  if (j == len) return;
  if constexpr (kMaskedTail) {
    const auto m = hn::FirstN(d, size_t(len - j));
    hn::BlendedStore(hn::MulAdd(hn::Sub(hn::MaskedLoad(m, d, x + j), vmu), va, vb), m, d, y + j);
  } else {
    for (; j < len; ++j) y[j] = (x[j] - mu) * scale + shift;
  }
}

// dx = a * dy + b * (x - mu) + c over [0, len).
void DxSpan(const float* HWY_RESTRICT dy, const float* HWY_RESTRICT x, float* HWY_RESTRICT dx,
            int64_t len, float mu, float a, float b, float c, bool stream) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  const VF vmu = hn::Set(d, mu), va = hn::Set(d, a), vb = hn::Set(d, b), vc = hn::Set(d, c);
  const auto value = [&](VF g, VF xv) {
    return hn::MulAdd(va, g, hn::MulAdd(vb, hn::Sub(xv, vmu), vc));
  };
  int64_t j = 0;
  if (stream) {
    for (; j + N <= len; j += N)
      hn::Stream(value(hn::LoadU(d, dy + j), hn::LoadU(d, x + j)), d, dx + j);
  } else {
    for (; j + N <= len; j += N)
      hn::StoreU(value(hn::LoadU(d, dy + j), hn::LoadU(d, x + j)), d, dx + j);
  }
  if (j == len) return;
  if constexpr (kMaskedTail) {
    const auto m = hn::FirstN(d, size_t(len - j));
    hn::BlendedStore(value(hn::MaskedLoad(m, d, dy + j), hn::MaskedLoad(m, d, x + j)), m, d,
                     dx + j);
  } else {
    for (; j < len; ++j) dx[j] = a * dy[j] + (b * (x[j] - mu) + c);
  }
}

// ---- NCHW (s > 1) ----

// Channel k's planes for samples [i0, i1), in order. The vector partial sums
// run across planes (a horizontal reduction per plane would cost more than
// a short plane's loads) and move to double every kBlock values.
template <class Body, class Tail, class Flush>
HWY_INLINE void ForPlanes(const Shape& shape, int64_t k, int64_t i0, int64_t i1, Body&& body,
                          Tail&& tail, Flush&& flush) {
  const int64_t c = shape.c, s = shape.s;
  const int64_t N = int64_t(hn::Lanes(DF()));
  int64_t pending = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t base = (i * c + k) * s;
    int64_t j = 0;
    for (; j + 2 * N <= s; j += 2 * N) body(base + j, base + j + N);
    if (j + N <= s) {
      body(base + j, -1);
      j += N;
    }
    for (; j < s; ++j) tail(base + j);
    pending += s;
    if (pending >= kBlock || i + 1 == i1) {
      flush();
      pending = 0;
    }
  }
}

// Moments of channel k over samples [i0, i1): a sum pass, then a centered
// pass that rereads the unit from cache.
Moments NchwUnitMoments(const Shape& shape, const float* HWY_RESTRICT x, int64_t k, int64_t i0,
                        int64_t i1) {
  const DF d;
  const VF z = hn::Zero(d);
  VF a0 = z, a1 = z;
  float ta = 0;
  double sum = 0;
  ForPlanes(
      shape, k, i0, i1,
      [&](int64_t j0, int64_t j1) {
        a0 = hn::Add(a0, hn::LoadU(d, x + j0));
        if (j1 >= 0) a1 = hn::Add(a1, hn::LoadU(d, x + j1));
      },
      [&](int64_t j) { ta += x[j]; },
      [&] {
        sum += Total(d, a0, a1, z, z) + double(ta);
        a0 = a1 = z;
        ta = 0;
      });
  const double count = double((i1 - i0) * shape.s);
  const float mu = float(sum / count);
  const VF vmu = hn::Set(d, mu);
  VF s0 = z, s1 = z, q0 = z, q1 = z;
  float ts = 0, tq = 0;
  double dev = 0, sq = 0;
  ForPlanes(
      shape, k, i0, i1,
      [&](int64_t j0, int64_t j1) {
        const VF e0 = hn::Sub(hn::LoadU(d, x + j0), vmu);
        s0 = hn::Add(s0, e0);
        q0 = hn::MulAdd(e0, e0, q0);
        if (j1 >= 0) {
          const VF e1 = hn::Sub(hn::LoadU(d, x + j1), vmu);
          s1 = hn::Add(s1, e1);
          q1 = hn::MulAdd(e1, e1, q1);
        }
      },
      [&](int64_t j) {
        const float e = x[j] - mu;
        ts += e;
        tq += e * e;
      },
      [&] {
        dev += Total(d, s0, s1, z, z) + double(ts);
        sq += Total(d, q0, q1, z, z) + double(tq);
        s0 = s1 = q0 = q1 = z;
        ts = tq = 0;
      });
  // Corrected two-pass: the deviations' own mean repairs mu's rounding.
  return {count, double(mu) + dev / count, sq - dev * dev / count};
}

// sum dy and sum dy * (x - mu) of channel k over samples [i0, i1).
Pair NchwUnitDot(const Shape& shape, const float* HWY_RESTRICT dy, const float* HWY_RESTRICT x,
                 int64_t k, int64_t i0, int64_t i1, float mu) {
  const DF d;
  const VF z = hn::Zero(d), vmu = hn::Set(d, mu);
  VF s0 = z, s1 = z, q0 = z, q1 = z;
  float ts = 0, tq = 0;
  Pair total;
  ForPlanes(
      shape, k, i0, i1,
      [&](int64_t j0, int64_t j1) {
        const VF g0 = hn::LoadU(d, dy + j0);
        s0 = hn::Add(s0, g0);
        q0 = hn::MulAdd(g0, hn::Sub(hn::LoadU(d, x + j0), vmu), q0);
        if (j1 >= 0) {
          const VF g1 = hn::LoadU(d, dy + j1);
          s1 = hn::Add(s1, g1);
          q1 = hn::MulAdd(g1, hn::Sub(hn::LoadU(d, x + j1), vmu), q1);
        }
      },
      [&](int64_t j) {
        ts += dy[j];
        tq += dy[j] * (x[j] - mu);
      },
      [&] {
        total.first += Total(d, s0, s1, z, z) + double(ts);
        total.second += Total(d, q0, q1, z, z) + double(tq);
        s0 = s1 = q0 = q1 = z;
        ts = tq = 0;
      });
  return total;
}

// ---- rows (NHWC and 2-D) ----

// Row kernels work on a block of NV vectors of channels [k0, k0 + NV * N)
// with the partial sums in registers; every kFlushRows rows the float
// partials move to double totals.
template <int NV>
HWY_INLINE void FlushBlock(DF d, VF (&acc)[4], double* HWY_RESTRICT total) {
  const int64_t N = int64_t(hn::Lanes(d));
#if HWY_TARGET == HWY_SCALAR
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    total[v] += double(hn::GetLane(acc[v]));
    acc[v] = hn::Zero(d);
  }
  (void)N;
#else
  // Widen each half of the float vector to a double vector and add.
  const hn::Half<DF> dh;
  const hn::Rebind<double, decltype(dh)> dd;
  const int64_t H = int64_t(hn::Lanes(dd));
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    double* HWY_RESTRICT t = total + v * N;
    hn::StoreU(hn::Add(hn::LoadU(dd, t), hn::PromoteTo(dd, hn::LowerHalf(dh, acc[v]))), dd, t);
    hn::StoreU(hn::Add(hn::LoadU(dd, t + H), hn::PromoteTo(dd, hn::UpperHalf(dh, acc[v]))), dd,
               t + H);
    acc[v] = hn::Zero(d);
  }
#endif
}

// total[k0 + i] += sum over rows of x[r, k0 + i].
template <int NV>
void SumBlock(const float* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t r0, int64_t r1,
              double* HWY_RESTRICT total) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  VF acc[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) acc[v] = hn::Zero(d);
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    const int64_t re = std::min(r1, rb + kFlushRows);
    for (int64_t r = rb; r < re; ++r) {
      const float* HWY_RESTRICT row = x + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v] = hn::Add(acc[v], hn::LoadU(d, row + v * N));
    }
    FlushBlock<NV>(d, acc, total + k0);
  }
}

// dev[k] += sum (x - mu_k), sq[k] += sum (x - mu_k)^2 for the block's channels.
template <int NV>
void CenteredBlock(const float* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t r0, int64_t r1,
                   const float* HWY_RESTRICT mu, double* HWY_RESTRICT dev,
                   double* HWY_RESTRICT sq) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  VF vmu[4], s[4], q[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    vmu[v] = v < NV ? hn::LoadU(d, mu + k0 + v * N) : hn::Zero(d);
    s[v] = hn::Zero(d);
    q[v] = hn::Zero(d);
  }
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    const int64_t re = std::min(r1, rb + kFlushRows);
    for (int64_t r = rb; r < re; ++r) {
      const float* HWY_RESTRICT row = x + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const VF e = hn::Sub(hn::LoadU(d, row + v * N), vmu[v]);
        s[v] = hn::Add(s[v], e);
        q[v] = hn::MulAdd(e, e, q[v]);
      }
    }
    FlushBlock<NV>(d, s, dev + k0);
    FlushBlock<NV>(d, q, sq + k0);
  }
}

// sum_dy[k] += sum dy, sum_dy_xmu[k] += sum dy * (x - mu_k).
template <int NV>
void DotBlock(const float* HWY_RESTRICT dy, const float* HWY_RESTRICT x, int64_t c, int64_t k0,
              int64_t r0, int64_t r1, const float* HWY_RESTRICT mu, double* HWY_RESTRICT sum_dy,
              double* HWY_RESTRICT sum_dy_xmu) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  VF vmu[4], s[4], q[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    vmu[v] = v < NV ? hn::LoadU(d, mu + k0 + v * N) : hn::Zero(d);
    s[v] = hn::Zero(d);
    q[v] = hn::Zero(d);
  }
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    const int64_t re = std::min(r1, rb + kFlushRows);
    for (int64_t r = rb; r < re; ++r) {
      const float* HWY_RESTRICT xr = x + r * c + k0;
      const float* HWY_RESTRICT gr = dy + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const VF g = hn::LoadU(d, gr + v * N);
        s[v] = hn::Add(s[v], g);
        q[v] = hn::MulAdd(g, hn::Sub(hn::LoadU(d, xr + v * N), vmu[v]), q[v]);
      }
    }
    FlushBlock<NV>(d, s, sum_dy + k0);
    FlushBlock<NV>(d, q, sum_dy_xmu + k0);
  }
}

// Runs f.template operator()<NV>(k0) over channel blocks of up to 4 vectors
// and returns where the scalar tail starts.
template <class F>
HWY_INLINE int64_t ForBlocks(int64_t c, F&& f) {
  const int64_t N = int64_t(hn::Lanes(DF()));
  int64_t k0 = 0;
  for (; k0 + 4 * N <= c; k0 += 4 * N) f.template operator()<4>(k0);
  switch ((c - k0) / N) {
    case 3:
      f.template operator()<3>(k0);
      break;
    case 2:
      f.template operator()<2>(k0);
      break;
    case 1:
      f.template operator()<1>(k0);
      break;
    default:
      break;
  }
  return k0 + (c - k0) / N * N;
}

// Rows of the pilot mean: all of a short unit (an exact two-pass, whose float
// partial sums then see no cancellation), else kFlushRows rows, which bounds
// the cancellation by rows / kFlushRows and typically keeps it near 1.
inline int64_t pilot_rows(int64_t rows) { return rows <= 16 * kFlushRows ? rows : kFlushRows; }

// Wide rows: the block walks visit many rows at once, which the hardware
// prefetchers follow poorly; a sequential sweep of prefetches first brings
// the unit in at streaming speed.
HWY_INLINE void PrefetchRows(const float* x, int64_t c, int64_t r0, int64_t r1) {
  if (c <= 4 * int64_t(hn::Lanes(DF()))) return;
  const char* p = reinterpret_cast<const char*>(x + r0 * c);
  const char* end = reinterpret_cast<const char*>(x + r1 * c);
  for (; p < end; p += 64) hwy::Prefetch(p);
}

// Per-channel mean and M2 of rows [r0, r1), centered on a pilot mean mu: the
// mean of the unit's first pilot_rows rows, whose sum pass leaves them in
// cache (for a long unit, one pass over the rest). Those p rows average to mu, so
// (mu - mean)^2 <= var * rows / p: the cancellation in
// M2 = sum (x - mu)^2 - (sum (x - mu))^2 / rows is bounded whatever the data,
// unlike a raw sum of squares.
void RowsUnitMoments(const float* x, int64_t c, int64_t r0, int64_t r1, double* mean, double* m2,
                     float* mu, double* dev) {
  PrefetchRows(x, c, r0, r1);
  std::fill(mean, mean + c, 0.0);
  std::fill(m2, m2 + c, 0.0);
  std::fill(dev, dev + c, 0.0);
  const int64_t pilot_end = r0 + pilot_rows(r1 - r0);
  const int64_t tail =
      ForBlocks(c, [&]<int NV>(int64_t k0) { SumBlock<NV>(x, c, k0, r0, pilot_end, mean); });
  for (int64_t r = r0; r < pilot_end; ++r)
    for (int64_t k = tail; k < c; ++k) mean[k] += double(x[r * c + k]);
  const double inv_pilot = 1.0 / double(pilot_end - r0);
  for (int64_t k = 0; k < c; ++k) mu[k] = float(mean[k] * inv_pilot);
  ForBlocks(c, [&]<int NV>(int64_t k0) { CenteredBlock<NV>(x, c, k0, r0, r1, mu, dev, m2); });
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t k = tail; k < c; ++k) {
      const double e = double(x[r * c + k] - mu[k]);
      dev[k] += e;
      m2[k] += e * e;
    }
  const double inv_count = 1.0 / double(r1 - r0);
  for (int64_t k = 0; k < c; ++k) {
    const double d = dev[k] * inv_count;
    mean[k] = double(mu[k]) + d;
    m2[k] -= dev[k] * d;
  }
}

// Per-channel sum dy and sum dy * (x - mu) of rows [r0, r1).
void RowsUnitDot(const float* dy, const float* x, const float* mu, int64_t c, int64_t r0,
                 int64_t r1, double* sum_dy, double* sum_dy_xmu) {
  PrefetchRows(x, c, r0, r1);
  PrefetchRows(dy, c, r0, r1);
  std::fill(sum_dy, sum_dy + c, 0.0);
  std::fill(sum_dy_xmu, sum_dy_xmu + c, 0.0);
  const int64_t tail = ForBlocks(
      c, [&]<int NV>(int64_t k0) { DotBlock<NV>(dy, x, c, k0, r0, r1, mu, sum_dy, sum_dy_xmu); });
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t k = tail; k < c; ++k) {
      sum_dy[k] += double(dy[r * c + k]);
      sum_dy_xmu[k] += double(dy[r * c + k]) * double(x[r * c + k] - mu[k]);
    }
}

// ---- whole tensors ----

void StatsAll(const Shape& shape, const float* x, double* mean, double* var) {
  const int nt = threads_for(shape);
  const int64_t c = shape.c;
  if (!rows_layout(shape)) {
    const NchwPlan plan = nchw_plan(shape, 1);
    const int64_t units = c * plan.groups;
    std::vector<Moments> part(static_cast<size_t>(units));
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t k = u / plan.groups, g = u % plan.groups;
      part[size_t(u)] =
          NchwUnitMoments(shape, x, k, g * plan.group, std::min(shape.n, (g + 1) * plan.group));
    }
    for (int64_t k = 0; k < c; ++k) {
      Moments total;
      for (int64_t g = 0; g < plan.groups; ++g)
        total = merge(total, part[size_t(k * plan.groups + g)]);
      mean[k] = total.mean;
      var[k] = total.m2 / total.count;
    }
    return;
  }
  const int64_t rows = shape.m(), per = rows_per_unit(c), units = (rows + per - 1) / per;
  double* part_mean = scratch<double, 0>(units * c);
  double* part_m2 = scratch<double, 1>(units * c);
#pragma omp parallel num_threads(nt)
  {
    float* mu = scratch<float, 2>(c);
    double* dev = scratch<double, 3>(c);
#pragma omp for schedule(dynamic)
    for (int64_t u = 0; u < units; ++u)
      RowsUnitMoments(x, c, u * per, std::min(rows, (u + 1) * per), part_mean + u * c,
                      part_m2 + u * c, mu, dev);
  }
  // Merged in unit order: the mean from the units' sums, then M2 as the
  // units' M2 plus their means' spread about it. Channel blocks in parallel.
  const int64_t kb = 256, blocks = (c + kb - 1) / kb;
#pragma omp parallel for schedule(static) num_threads(units* c >= 16384 ? nt : 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t k0 = blk * kb, k1 = std::min(c, k0 + kb);
    std::fill(mean + k0, mean + k1, 0.0);
    std::fill(var + k0, var + k1, 0.0);
    for (int64_t u = 0; u < units; ++u) {
      const double count = double(std::min(rows, (u + 1) * per) - u * per);
      for (int64_t k = k0; k < k1; ++k) mean[k] += count * part_mean[u * c + k];
    }
    for (int64_t k = k0; k < k1; ++k) mean[k] /= double(rows);
    for (int64_t u = 0; u < units; ++u) {
      const double count = double(std::min(rows, (u + 1) * per) - u * per);
      for (int64_t k = k0; k < k1; ++k) {
        const double delta = part_mean[u * c + k] - mean[k];
        var[k] += part_m2[u * c + k] + count * delta * delta;
      }
    }
    for (int64_t k = k0; k < k1; ++k) var[k] /= double(rows);
  }
}

void NormalizeAll(const Shape& shape, const float* x, const float* mu, const float* scale,
                  const float* shift, float* y) {
  const int nt = threads_for(shape);
  const bool stream = stream_output(shape, y);
  const int64_t c = shape.c;
  if (!rows_layout(shape)) {
    const int64_t planes = shape.n * c, s = shape.s;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t k = p % c;
      NormalizeSpan(x + p * s, y + p * s, s, mu[k], scale[k], shift[k], stream);
    }
  } else {
    const DF d;
    const int64_t N = int64_t(hn::Lanes(d));
    const int64_t rows = shape.m();
    if (c % N == 0 && c <= 4 * N) {
      // Narrow rows: the parameters stay in registers.
      ForBlocks(c, [&]<int NV>(int64_t) {
        VF vmu[4], va[4], vb[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          const int64_t k = v < NV ? v * N : 0;
          vmu[v] = hn::LoadU(d, mu + k);
          va[v] = hn::LoadU(d, scale + k);
          vb[v] = hn::LoadU(d, shift + k);
        }
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t r = 0; r < rows; ++r)
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) {
            const VF out =
                hn::MulAdd(hn::Sub(hn::LoadU(d, x + r * c + v * N), vmu[v]), va[v], vb[v]);
            if (stream) {
              hn::Stream(out, d, y + r * c + v * N);
            } else {
              hn::StoreU(out, d, y + r * c + v * N);
            }
          }
      });
      if (stream) hwy::FlushStream();
      return;
    }
    const float* HWY_RESTRICT pm = mu;
    const float* HWY_RESTRICT ps = scale;
    const float* HWY_RESTRICT pb = shift;
#pragma omp parallel for schedule(static) num_threads(nt) firstprivate(pm, ps, pb)
    for (int64_t r = 0; r < rows; ++r) {
      const float* HWY_RESTRICT xr = x + r * c;
      float* HWY_RESTRICT yr = y + r * c;
      // stream implies aligned rows of whole vectors (stream_output).
      int64_t k = 0;
      if (stream) {
        for (; k + N <= c; k += N)
          hn::Stream(hn::MulAdd(hn::Sub(hn::LoadU(d, xr + k), hn::LoadU(d, pm + k)),
                                hn::LoadU(d, ps + k), hn::LoadU(d, pb + k)),
                     d, yr + k);
      } else {
        for (; k + N <= c; k += N)
          hn::StoreU(hn::MulAdd(hn::Sub(hn::LoadU(d, xr + k), hn::LoadU(d, pm + k)),
                                hn::LoadU(d, ps + k), hn::LoadU(d, pb + k)),
                     d, yr + k);
      }
      for (; k < c; ++k) yr[k] = (xr[k] - pm[k]) * ps[k] + pb[k];
    }
  }
  if (stream) hwy::FlushStream();
}

void ReduceAll(const Shape& shape, const float* dy, const float* x, const float* mu, double* sum_dy,
               double* sum_dy_xmu) {
  const int nt = threads_for(shape);
  const int64_t c = shape.c;
  if (!rows_layout(shape)) {
    const NchwPlan plan = nchw_plan(shape, 2);
    const int64_t units = c * plan.groups;
    std::vector<Pair> part(static_cast<size_t>(units));
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t k = u / plan.groups, g = u % plan.groups;
      part[size_t(u)] = NchwUnitDot(shape, dy, x, k, g * plan.group,
                                    std::min(shape.n, (g + 1) * plan.group), mu[k]);
    }
    for (int64_t k = 0; k < c; ++k) {
      Pair total;
      for (int64_t g = 0; g < plan.groups; ++g) {
        total.first += part[size_t(k * plan.groups + g)].first;
        total.second += part[size_t(k * plan.groups + g)].second;
      }
      sum_dy[k] = total.first;
      sum_dy_xmu[k] = total.second;
    }
    return;
  }
  const int64_t rows = shape.m(), per = rows_per_unit(c), units = (rows + per - 1) / per;
  double* part_dy = scratch<double, 0>(units * c);
  double* part_dyxm = scratch<double, 1>(units * c);
#pragma omp parallel for schedule(dynamic) num_threads(nt)
  for (int64_t u = 0; u < units; ++u)
    RowsUnitDot(dy, x, mu, c, u * per, std::min(rows, (u + 1) * per), part_dy + u * c,
                part_dyxm + u * c);
  const int64_t kb = 256, blocks = (c + kb - 1) / kb;
#pragma omp parallel for schedule(static) num_threads(units* c >= 16384 ? nt : 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t k0 = blk * kb, k1 = std::min(c, k0 + kb);
    std::fill(sum_dy + k0, sum_dy + k1, 0.0);
    std::fill(sum_dy_xmu + k0, sum_dy_xmu + k1, 0.0);
    for (int64_t u = 0; u < units; ++u)
      for (int64_t k = k0; k < k1; ++k) {
        sum_dy[k] += part_dy[u * c + k];
        sum_dy_xmu[k] += part_dyxm[u * c + k];
      }
  }
}

void DxAll(const Shape& shape, const float* dy, const float* x, const float* mu, const float* a,
           const float* b, const float* cc, float* dx) {
  const int nt = threads_for(shape);
  const bool stream = stream_output(shape, dx);
  const int64_t c = shape.c;
  if (!rows_layout(shape)) {
    const int64_t planes = shape.n * c, s = shape.s;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t k = p % c;
      DxSpan(dy + p * s, x + p * s, dx + p * s, s, mu[k], a[k], b[k], cc[k], stream);
    }
  } else {
    const DF d;
    const int64_t N = int64_t(hn::Lanes(d));
    const int64_t rows = shape.m();
    const float* HWY_RESTRICT pm = mu;
    const float* HWY_RESTRICT pa = a;
    const float* HWY_RESTRICT pb = b;
    const float* HWY_RESTRICT pc = cc;
#pragma omp parallel for schedule(static) num_threads(nt) firstprivate(pm, pa, pb, pc)
    for (int64_t r = 0; r < rows; ++r) {
      const float* HWY_RESTRICT xr = x + r * c;
      const float* HWY_RESTRICT gr = dy + r * c;
      float* HWY_RESTRICT out = dx + r * c;
      int64_t k = 0;
      // stream implies aligned rows of whole vectors (stream_output).
      const auto vectors = [&](auto store) {
        for (; k + N <= c; k += N) {
          const VF xm = hn::Sub(hn::LoadU(d, xr + k), hn::LoadU(d, pm + k));
          const VF rest = hn::MulAdd(hn::LoadU(d, pb + k), xm, hn::LoadU(d, pc + k));
          store(hn::MulAdd(hn::LoadU(d, pa + k), hn::LoadU(d, gr + k), rest), out + k);
        }
      };
      if (stream) {
        vectors([&](VF v, float* p) { hn::Stream(v, d, p); });
      } else {
        vectors([&](VF v, float* p) { hn::StoreU(v, d, p); });
      }
      for (; k < c; ++k) out[k] = pa[k] * gr[k] + (pb[k] * (xr[k] - pm[k]) + pc[k]);
    }
  }
  if (stream) hwy::FlushStream();
}

// ---- column units (rows layouts with few rows) ----

// Statistics, finishing and y for channels [k0, k0 + NV * N) over all m rows.
template <int NV>
void ColumnForward(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t c, int64_t m,
                   int64_t k0, const ForwardOutputs& out, bool stream) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d)), W = NV * N;
  double* sum = scratch<double, 4>(c);
  double* dev = scratch<double, 5>(c);
  double* sq = scratch<double, 6>(c);
  float* mu = scratch<float, 7>(c);
  float* scale = scratch<float, 8>(c);
  float* shift = scratch<float, 9>(c);
  std::fill(sum + k0, sum + k0 + W, 0.0);
  std::fill(dev + k0, dev + k0 + W, 0.0);
  std::fill(sq + k0, sq + k0 + W, 0.0);
  // Pilot-centered single pass, as RowsUnitMoments.
  const int64_t pilot = pilot_rows(m);
  SumBlock<NV>(x, c, k0, 0, pilot, sum);
  for (int64_t k = k0; k < k0 + W; ++k) mu[k] = float(sum[k] / double(pilot));
  CenteredBlock<NV>(x, c, k0, 0, m, mu, dev, sq);
  for (int64_t k = k0; k < k0 + W; ++k) {
    const double e = dev[k] / double(m);
    finish_forward_channel(out, double(m), k, double(mu[k]) + e, (sq[k] - dev[k] * e) / double(m),
                           mu[k], scale[k], shift[k]);
  }
  VF vmu[4], va[4], vb[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const int64_t k = k0 + (v < NV ? v * N : 0);
    vmu[v] = hn::LoadU(d, mu + k);
    va[v] = hn::LoadU(d, scale + k);
    vb[v] = hn::LoadU(d, shift + k);
  }
  for (int64_t r = 0; r < m; ++r) {
    const float* HWY_RESTRICT xr = x + r * c + k0;
    float* HWY_RESTRICT yr = y + r * c + k0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const VF o = hn::MulAdd(hn::Sub(hn::LoadU(d, xr + v * N), vmu[v]), va[v], vb[v]);
      if (stream) {
        hn::Stream(o, d, yr + v * N);
      } else {
        hn::StoreU(o, d, yr + v * N);
      }
    }
  }
}

// The channels past the last whole vector, in scalar code, same formulas.
void ColumnForwardTail(const float* x, float* y, int64_t c, int64_t m, int64_t k0,
                       const ForwardOutputs& out) {
  const int64_t pilot = pilot_rows(m);
  for (int64_t k = k0; k < c; ++k) {
    double sum = 0;
    for (int64_t r = 0; r < pilot; ++r) sum += double(x[r * c + k]);
    float mu = float(sum / double(pilot));
    double dev = 0, sq = 0;
    for (int64_t r = 0; r < m; ++r) {
      const double e = double(x[r * c + k] - mu);
      dev += e;
      sq += e * e;
    }
    const double e = dev / double(m);
    float scale, shift;
    finish_forward_channel(out, double(m), k, double(mu) + e, (sq - dev * e) / double(m), mu, scale,
                           shift);
    for (int64_t r = 0; r < m; ++r) y[r * c + k] = (x[r * c + k] - mu) * scale + shift;
  }
}

// Reduction, finishing and dx for channels [k0, k0 + NV * N) over all m rows.
template <int NV>
void ColumnBackward(const float* HWY_RESTRICT dy, const float* HWY_RESTRICT x,
                    float* HWY_RESTRICT dx, int64_t c, int64_t m, int64_t k0,
                    const BackwardOutputs& out, bool stream) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d)), W = NV * N;
  double* sum_dy = scratch<double, 4>(c);
  double* sum_dy_xmu = scratch<double, 5>(c);
  float* a = scratch<float, 7>(c);
  float* b = scratch<float, 8>(c);
  float* cc = scratch<float, 9>(c);
  std::fill(sum_dy + k0, sum_dy + k0 + W, 0.0);
  std::fill(sum_dy_xmu + k0, sum_dy_xmu + k0 + W, 0.0);
  DotBlock<NV>(dy, x, c, k0, 0, m, out.mean, sum_dy, sum_dy_xmu);
  for (int64_t k = k0; k < k0 + W; ++k)
    finish_backward_channel(out, double(m), k, sum_dy[k], sum_dy_xmu[k], a[k], b[k], cc[k]);
  if (!dx) return;
  VF vmu[4], va[4], vb[4], vc[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const int64_t k = k0 + (v < NV ? v * N : 0);
    vmu[v] = hn::LoadU(d, out.mean + k);
    va[v] = hn::LoadU(d, a + k);
    vb[v] = hn::LoadU(d, b + k);
    vc[v] = hn::LoadU(d, cc + k);
  }
  for (int64_t r = 0; r < m; ++r) {
    const float* HWY_RESTRICT xr = x + r * c + k0;
    const float* HWY_RESTRICT gr = dy + r * c + k0;
    float* HWY_RESTRICT o = dx + r * c + k0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const VF rest = hn::MulAdd(vb[v], hn::Sub(hn::LoadU(d, xr + v * N), vmu[v]), vc[v]);
      const VF val = hn::MulAdd(va[v], hn::LoadU(d, gr + v * N), rest);
      if (stream) {
        hn::Stream(val, d, o + v * N);
      } else {
        hn::StoreU(val, d, o + v * N);
      }
    }
  }
}

void ColumnBackwardTail(const float* dy, const float* x, float* dx, int64_t c, int64_t m,
                        int64_t k0, const BackwardOutputs& out) {
  for (int64_t k = k0; k < c; ++k) {
    const float mu = out.mean[k];
    double sdy = 0, sdyxm = 0;
    for (int64_t r = 0; r < m; ++r) {
      sdy += double(dy[r * c + k]);
      sdyxm += double(dy[r * c + k]) * double(x[r * c + k] - mu);
    }
    float a, b, cc;
    finish_backward_channel(out, double(m), k, sdy, sdyxm, a, b, cc);
    if (dx)
      for (int64_t r = 0; r < m; ++r)
        dx[r * c + k] = a * dy[r * c + k] + (b * (x[r * c + k] - mu) + cc);
  }
}

// Runs the column kernels over blocks of up to 4 vectors of channels, in
// parallel, then the scalar tail.
template <class Block, class Tail>
void ForColumns(const Shape& shape, Block&& block, Tail&& tail) {
  const int64_t c = shape.c;
  const int64_t N = int64_t(hn::Lanes(DF())), W = 4 * N;
  const int64_t full = c / N * N, blocks = (full + W - 1) / W;
  const int nt = threads_for(shape);
#pragma omp parallel for schedule(dynamic) num_threads(nt)
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t k0 = i * W;
    switch (std::min<int64_t>(4, (full - k0) / N)) {
      case 4:
        block.template operator()<4>(k0);
        break;
      case 3:
        block.template operator()<3>(k0);
        break;
      case 2:
        block.template operator()<2>(k0);
        break;
      default:
        block.template operator()<1>(k0);
        break;
    }
  }
  if (full < c) tail(full);
}

// ---- entry points ----

void ForwardTraining(const Shape& shape, const float* x, float* y, const ForwardOutputs& out) {
  const int64_t c = shape.c;
  const double m = double(shape.m());
  if (!rows_layout(shape) && nchw_plan(shape, 1).whole_channel()) {
    // Each channel in one unit: statistics, saved and running statistics and
    // y while the channel is still in cache.
    const int nt = threads_for(shape);
    const bool stream = stream_output(shape, y);
    const int64_t n = shape.n, s = shape.s;
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int64_t k = 0; k < c; ++k) {
      const Moments mo = NchwUnitMoments(shape, x, k, 0, n);
      float mu, scale, shift;
      finish_forward_channel(out, m, k, mo.mean, mo.m2 / mo.count, mu, scale, shift);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t base = (i * c + k) * s;
        NormalizeSpan(x + base, y + base, s, mu, scale, shift, stream);
      }
    }
    if (stream) hwy::FlushStream();
    return;
  }
  if (rows_layout(shape) && column_units(shape, 1)) {
    const bool stream = stream_output(shape, y);
    const int64_t rows = shape.m();
    ForColumns(
        shape, [&]<int NV>(int64_t k0) { ColumnForward<NV>(x, y, c, rows, k0, out, stream); },
        [&](int64_t k0) { ColumnForwardTail(x, y, c, rows, k0, out); });
    if (stream) hwy::FlushStream();
    return;
  }
  std::vector<double> mean(static_cast<size_t>(c)), var(static_cast<size_t>(c));
  StatsAll(shape, x, mean.data(), var.data());
  std::vector<float> mu(static_cast<size_t>(c)), scale(static_cast<size_t>(c)),
      shift(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k)
    finish_forward_channel(out, m, k, mean[size_t(k)], var[size_t(k)], mu[size_t(k)],
                           scale[size_t(k)], shift[size_t(k)]);
  NormalizeAll(shape, x, mu.data(), scale.data(), shift.data(), y);
}

void Backward(const Shape& shape, const float* dy, const float* x, float* dx,
              const BackwardOutputs& out) {
  const int64_t c = shape.c;
  const double m = double(shape.m());
  const float* mu = out.mean;  // save_mean is float: x - mu needs no correction
  if (dx && !rows_layout(shape) && nchw_plan(shape, 2).whole_channel()) {
    const int nt = threads_for(shape);
    const bool stream = stream_output(shape, dx);
    const int64_t n = shape.n, s = shape.s;
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int64_t k = 0; k < c; ++k) {
      const Pair sums = NchwUnitDot(shape, dy, x, k, 0, n, mu[k]);
      float a, b, cc;
      finish_backward_channel(out, m, k, sums.first, sums.second, a, b, cc);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t base = (i * c + k) * s;
        DxSpan(dy + base, x + base, dx + base, s, mu[k], a, b, cc, stream);
      }
    }
    if (stream) hwy::FlushStream();
    return;
  }
  if (rows_layout(shape) && column_units(shape, 2)) {
    const bool stream = dx && stream_output(shape, dx);
    const int64_t rows = shape.m();
    ForColumns(
        shape, [&]<int NV>(int64_t k0) { ColumnBackward<NV>(dy, x, dx, c, rows, k0, out, stream); },
        [&](int64_t k0) { ColumnBackwardTail(dy, x, dx, c, rows, k0, out); });
    if (stream) hwy::FlushStream();
    return;
  }
  std::vector<double> sum_dy(static_cast<size_t>(c)), sum_dy_xmu(static_cast<size_t>(c));
  ReduceAll(shape, dy, x, mu, sum_dy.data(), sum_dy_xmu.data());
  std::vector<float> a(static_cast<size_t>(c)), b(static_cast<size_t>(c)),
      cc(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k)
    finish_backward_channel(out, m, k, sum_dy[size_t(k)], sum_dy_xmu[size_t(k)], a[size_t(k)],
                            b[size_t(k)], cc[size_t(k)]);
  if (dx) DxAll(shape, dy, x, mu, a.data(), b.data(), cc.data(), dx);
}

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bnorm::cpu {

HWY_EXPORT(ForwardTraining);
HWY_EXPORT(NormalizeAll);
HWY_EXPORT(StatsAll);
HWY_EXPORT(ReduceAll);
HWY_EXPORT(DxAll);
HWY_EXPORT(Backward);

void forward_training_f32(const Shape& shape, const float* x, float* y, const ForwardOutputs& out) {
  HWY_DYNAMIC_DISPATCH(ForwardTraining)(shape, x, y, out);
}

void normalize_f32(const Shape& shape, const float* x, const float* mu, const float* scale,
                   const float* shift, float* y) {
  HWY_DYNAMIC_DISPATCH(NormalizeAll)(shape, x, mu, scale, shift, y);
}

void moments_f32(const Shape& shape, const float* x, double* mean, double* var) {
  HWY_DYNAMIC_DISPATCH(StatsAll)(shape, x, mean, var);
}

void backward_reduce_f32(const Shape& shape, const float* dy, const float* x, const float* mu,
                         double* sum_dy, double* sum_dy_xmu) {
  HWY_DYNAMIC_DISPATCH(ReduceAll)(shape, dy, x, mu, sum_dy, sum_dy_xmu);
}

void backward_dx_f32(const Shape& shape, const float* dy, const float* x, const float* mu,
                     const float* a, const float* b, const float* c, float* dx) {
  HWY_DYNAMIC_DISPATCH(DxAll)(shape, dy, x, mu, a, b, c, dx);
}

void backward_f32(const Shape& shape, const float* dy, const float* x, float* dx,
                  const BackwardOutputs& out) {
  HWY_DYNAMIC_DISPATCH(Backward)(shape, dy, x, dx, out);
}

}  // namespace bnorm::cpu
#endif  // HWY_ONCE
