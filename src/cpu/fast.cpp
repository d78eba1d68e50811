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

inline bool rows_layout(const Shape& shape) { return shape.layout == Layout::NHWC || shape.s == 1; }

inline int threads_for(const Shape& shape) {
  return shape.numel() * int64_t(sizeof(float)) >= kMinParallelBytes ? thread_count() : 1;
}

inline bool stream_output(const Shape& shape) {
  return shape.numel() * int64_t(sizeof(float)) >= kStreamBytes;
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

HWY_INLINE void Put(DF d, VF v, float* HWY_RESTRICT p, bool stream) {
  if (stream && reinterpret_cast<uintptr_t>(p) % (hn::Lanes(d) * sizeof(float)) == 0) {
    hn::Stream(v, d, p);
  } else {
    hn::StoreU(v, d, p);
  }
}

HWY_INLINE double Total(DF d, VF a0, VF a1, VF a2, VF a3) {
  return double(hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)))));
}

// sum p[0, len).
double SumSpan(const float* HWY_RESTRICT p, int64_t len) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  double total = 0;
  for (int64_t b0 = 0; b0 < len; b0 += kBlock) {
    const int64_t e = std::min(len, b0 + kBlock);
    VF a0 = hn::Zero(d), a1 = a0, a2 = a0, a3 = a0;
    int64_t j = b0;
    for (; j + 4 * N <= e; j += 4 * N) {
      a0 = hn::Add(a0, hn::LoadU(d, p + j));
      a1 = hn::Add(a1, hn::LoadU(d, p + j + N));
      a2 = hn::Add(a2, hn::LoadU(d, p + j + 2 * N));
      a3 = hn::Add(a3, hn::LoadU(d, p + j + 3 * N));
    }
    for (; j + N <= e; j += N) a0 = hn::Add(a0, hn::LoadU(d, p + j));
    float tail = 0;
    for (; j < e; ++j) tail += p[j];
    total += Total(d, a0, a1, a2, a3) + double(tail);
  }
  return total;
}

struct Pair {
  double first = 0, second = 0;
};

// sum (p - mu) and sum (p - mu)^2 over p[0, len).
Pair CenteredSpan(const float* HWY_RESTRICT p, int64_t len, float mu) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  const VF vmu = hn::Set(d, mu);
  Pair total;
  for (int64_t b0 = 0; b0 < len; b0 += kBlock) {
    const int64_t e = std::min(len, b0 + kBlock);
    VF s0 = hn::Zero(d), s1 = s0, q0 = s0, q1 = s0;
    int64_t j = b0;
    for (; j + 2 * N <= e; j += 2 * N) {
      const VF v0 = hn::Sub(hn::LoadU(d, p + j), vmu);
      const VF v1 = hn::Sub(hn::LoadU(d, p + j + N), vmu);
      s0 = hn::Add(s0, v0);
      s1 = hn::Add(s1, v1);
      q0 = hn::MulAdd(v0, v0, q0);
      q1 = hn::MulAdd(v1, v1, q1);
    }
    for (; j + N <= e; j += N) {
      const VF v0 = hn::Sub(hn::LoadU(d, p + j), vmu);
      s0 = hn::Add(s0, v0);
      q0 = hn::MulAdd(v0, v0, q0);
    }
    float ts = 0, tq = 0;
    for (; j < e; ++j) {
      const float v = p[j] - mu;
      ts += v;
      tq += v * v;
    }
    const VF z = hn::Zero(d);
    total.first += Total(d, s0, s1, z, z) + double(ts);
    total.second += Total(d, q0, q1, z, z) + double(tq);
  }
  return total;
}

// sum dy and sum dy * (x - mu) over [0, len).
Pair DotSpan(const float* HWY_RESTRICT dy, const float* HWY_RESTRICT x, int64_t len, float mu) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  const VF vmu = hn::Set(d, mu);
  Pair total;
  for (int64_t b0 = 0; b0 < len; b0 += kBlock) {
    const int64_t e = std::min(len, b0 + kBlock);
    VF s0 = hn::Zero(d), s1 = s0, q0 = s0, q1 = s0;
    int64_t j = b0;
    for (; j + 2 * N <= e; j += 2 * N) {
      const VF g0 = hn::LoadU(d, dy + j), g1 = hn::LoadU(d, dy + j + N);
      s0 = hn::Add(s0, g0);
      s1 = hn::Add(s1, g1);
      q0 = hn::MulAdd(g0, hn::Sub(hn::LoadU(d, x + j), vmu), q0);
      q1 = hn::MulAdd(g1, hn::Sub(hn::LoadU(d, x + j + N), vmu), q1);
    }
    for (; j + N <= e; j += N) {
      const VF g0 = hn::LoadU(d, dy + j);
      s0 = hn::Add(s0, g0);
      q0 = hn::MulAdd(g0, hn::Sub(hn::LoadU(d, x + j), vmu), q0);
    }
    float ts = 0, tq = 0;
    for (; j < e; ++j) {
      ts += dy[j];
      tq += dy[j] * (x[j] - mu);
    }
    const VF z = hn::Zero(d);
    total.first += Total(d, s0, s1, z, z) + double(ts);
    total.second += Total(d, q0, q1, z, z) + double(tq);
  }
  return total;
}

// y = (x - mu) * scale + shift over [0, len).
void NormalizeSpan(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t len, float mu,
                   float scale, float shift, bool stream) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  const VF vmu = hn::Set(d, mu), va = hn::Set(d, scale), vb = hn::Set(d, shift);
  int64_t j = 0;
  for (; j + N <= len; j += N)
    Put(d, hn::MulAdd(hn::Sub(hn::LoadU(d, x + j), vmu), va, vb), y + j, stream);
  for (; j < len; ++j) y[j] = (x[j] - mu) * scale + shift;
}

// dx = a * dy + b * (x - mu) + c over [0, len).
void DxSpan(const float* HWY_RESTRICT dy, const float* HWY_RESTRICT x, float* HWY_RESTRICT dx,
            int64_t len, float mu, float a, float b, float c, bool stream) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  const VF vmu = hn::Set(d, mu), va = hn::Set(d, a), vb = hn::Set(d, b), vc = hn::Set(d, c);
  int64_t j = 0;
  for (; j + N <= len; j += N) {
    const VF xm = hn::Sub(hn::LoadU(d, x + j), vmu);
    Put(d, hn::MulAdd(va, hn::LoadU(d, dy + j), hn::MulAdd(vb, xm, vc)), dx + j, stream);
  }
  for (; j < len; ++j) dx[j] = a * dy[j] + (b * (x[j] - mu) + c);
}

// ---- NCHW (s > 1) ----

// Moments of channel k over samples [i0, i1): a sum pass, then a centered
// pass that rereads the unit from cache.
Moments NchwUnitMoments(const Shape& shape, const float* x, int64_t k, int64_t i0, int64_t i1) {
  const int64_t c = shape.c, s = shape.s;
  double sum = 0;
  for (int64_t i = i0; i < i1; ++i) sum += SumSpan(x + (i * c + k) * s, s);
  const double count = double((i1 - i0) * s);
  const float mu = float(sum / count);
  Pair dev;
  for (int64_t i = i0; i < i1; ++i) {
    const Pair p = CenteredSpan(x + (i * c + k) * s, s, mu);
    dev.first += p.first;
    dev.second += p.second;
  }
  // Corrected two-pass: the deviations' own mean repairs mu's rounding.
  return {count, double(mu) + dev.first / count, dev.second - dev.first * dev.first / count};
}

Pair NchwUnitDot(const Shape& shape, const float* dy, const float* x, int64_t k, int64_t i0,
                 int64_t i1, float mu) {
  const int64_t c = shape.c, s = shape.s;
  Pair total;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t base = (i * c + k) * s;
    const Pair p = DotSpan(dy + base, x + base, s, mu);
    total.first += p.first;
    total.second += p.second;
  }
  return total;
}

// ---- rows (NHWC and 2-D) ----

// Adds acc[0, c) to total[0, c) and clears acc.
HWY_INLINE void Flush(float* HWY_RESTRICT acc, double* HWY_RESTRICT total, int64_t c) {
  for (int64_t k = 0; k < c; ++k) {
    total[k] += double(acc[k]);
    acc[k] = 0.f;
  }
}

// Per-channel mean and M2 of rows [r0, r1); scratch holds 2 * c floats.
void RowsUnitMoments(const float* x, int64_t c, int64_t r0, int64_t r1, double* mean, double* m2,
                     float* scratch) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  float* HWY_RESTRICT acc = scratch;
  float* HWY_RESTRICT acc2 = scratch + c;
  std::fill(acc, acc + 2 * c, 0.f);
  std::fill(mean, mean + c, 0.0);
  std::fill(m2, m2 + c, 0.0);
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    for (int64_t r = rb; r < std::min(r1, rb + kFlushRows); ++r) {
      const float* HWY_RESTRICT row = x + r * c;
      int64_t k = 0;
      for (; k + N <= c; k += N)
        hn::StoreU(hn::Add(hn::LoadU(d, acc + k), hn::LoadU(d, row + k)), d, acc + k);
      for (; k < c; ++k) acc[k] += row[k];
    }
    Flush(acc, mean, c);
  }
  const double count = double(r1 - r0);
  // mu (float) in acc2's place until the centered pass is done; the deviation
  // sums go to m2 (squares) and mean (plain) afterwards.
  float* HWY_RESTRICT mu = acc2;
  for (int64_t k = 0; k < c; ++k) mu[k] = float(mean[k] / count);
  std::vector<float> sq(size_t(c), 0.f);
  std::vector<double> dev(size_t(c), 0.0);
  float* HWY_RESTRICT accq = sq.data();
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    for (int64_t r = rb; r < std::min(r1, rb + kFlushRows); ++r) {
      const float* HWY_RESTRICT row = x + r * c;
      int64_t k = 0;
      for (; k + N <= c; k += N) {
        const VF v = hn::Sub(hn::LoadU(d, row + k), hn::LoadU(d, mu + k));
        hn::StoreU(hn::Add(hn::LoadU(d, acc + k), v), d, acc + k);
        hn::StoreU(hn::MulAdd(v, v, hn::LoadU(d, accq + k)), d, accq + k);
      }
      for (; k < c; ++k) {
        const float v = row[k] - mu[k];
        acc[k] += v;
        accq[k] += v * v;
      }
    }
    Flush(acc, dev.data(), c);
    Flush(accq, m2, c);
  }
  for (int64_t k = 0; k < c; ++k) {
    const double s1 = dev[size_t(k)];
    mean[k] = double(mu[k]) + s1 / count;
    m2[k] -= s1 * s1 / count;
  }
}

// Per-channel sum dy and sum dy * (x - mu) of rows [r0, r1); scratch: 2 * c.
void RowsUnitDot(const float* dy, const float* x, const float* mu, int64_t c, int64_t r0,
                 int64_t r1, double* sum_dy, double* sum_dy_xmu, float* scratch) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  float* HWY_RESTRICT acc = scratch;
  float* HWY_RESTRICT accq = scratch + c;
  std::fill(acc, acc + 2 * c, 0.f);
  std::fill(sum_dy, sum_dy + c, 0.0);
  std::fill(sum_dy_xmu, sum_dy_xmu + c, 0.0);
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    for (int64_t r = rb; r < std::min(r1, rb + kFlushRows); ++r) {
      const float* HWY_RESTRICT xr = x + r * c;
      const float* HWY_RESTRICT gr = dy + r * c;
      int64_t k = 0;
      for (; k + N <= c; k += N) {
        const VF g = hn::LoadU(d, gr + k);
        const VF xm = hn::Sub(hn::LoadU(d, xr + k), hn::LoadU(d, mu + k));
        hn::StoreU(hn::Add(hn::LoadU(d, acc + k), g), d, acc + k);
        hn::StoreU(hn::MulAdd(g, xm, hn::LoadU(d, accq + k)), d, accq + k);
      }
      for (; k < c; ++k) {
        acc[k] += gr[k];
        accq[k] += gr[k] * (xr[k] - mu[k]);
      }
    }
    Flush(acc, sum_dy, c);
    Flush(accq, sum_dy_xmu, c);
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
  std::vector<double> part_mean(static_cast<size_t>(units * c)),
      part_m2(static_cast<size_t>(units * c));
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> scratch(static_cast<size_t>(2 * c));
#pragma omp for schedule(dynamic)
    for (int64_t u = 0; u < units; ++u)
      RowsUnitMoments(x, c, u * per, std::min(rows, (u + 1) * per), part_mean.data() + u * c,
                      part_m2.data() + u * c, scratch.data());
  }
  for (int64_t k = 0; k < c; ++k) {
    Moments total;
    for (int64_t u = 0; u < units; ++u) {
      const double count = double(std::min(rows, (u + 1) * per) - u * per);
      total = merge(total, {count, part_mean[size_t(u * c + k)], part_m2[size_t(u * c + k)]});
    }
    mean[k] = total.mean;
    var[k] = total.m2 / total.count;
  }
}

void NormalizeAll(const Shape& shape, const float* x, const float* mu, const float* scale,
                  const float* shift, float* y) {
  const int nt = threads_for(shape);
  const bool stream = stream_output(shape);
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
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < rows; ++r) {
      const float* HWY_RESTRICT xr = x + r * c;
      float* HWY_RESTRICT yr = y + r * c;
      int64_t k = 0;
      for (; k + N <= c; k += N) {
        const VF v = hn::Sub(hn::LoadU(d, xr + k), hn::LoadU(d, mu + k));
        Put(d, hn::MulAdd(v, hn::LoadU(d, scale + k), hn::LoadU(d, shift + k)), yr + k, stream);
      }
      for (; k < c; ++k) yr[k] = (xr[k] - mu[k]) * scale[k] + shift[k];
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
  std::vector<double> part_dy(static_cast<size_t>(units * c)),
      part_dyxm(static_cast<size_t>(units * c));
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> scratch(static_cast<size_t>(2 * c));
#pragma omp for schedule(dynamic)
    for (int64_t u = 0; u < units; ++u)
      RowsUnitDot(dy, x, mu, c, u * per, std::min(rows, (u + 1) * per), part_dy.data() + u * c,
                  part_dyxm.data() + u * c, scratch.data());
  }
  std::fill(sum_dy, sum_dy + c, 0.0);
  std::fill(sum_dy_xmu, sum_dy_xmu + c, 0.0);
  for (int64_t u = 0; u < units; ++u)
    for (int64_t k = 0; k < c; ++k) {
      sum_dy[k] += part_dy[size_t(u * c + k)];
      sum_dy_xmu[k] += part_dyxm[size_t(u * c + k)];
    }
}

void DxAll(const Shape& shape, const float* dy, const float* x, const float* mu, const float* a,
           const float* b, const float* cc, float* dx) {
  const int nt = threads_for(shape);
  const bool stream = stream_output(shape);
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
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < rows; ++r) {
      const float* HWY_RESTRICT xr = x + r * c;
      const float* HWY_RESTRICT gr = dy + r * c;
      float* HWY_RESTRICT out = dx + r * c;
      int64_t k = 0;
      for (; k + N <= c; k += N) {
        const VF xm = hn::Sub(hn::LoadU(d, xr + k), hn::LoadU(d, mu + k));
        const VF rest = hn::MulAdd(hn::LoadU(d, b + k), xm, hn::LoadU(d, cc + k));
        Put(d, hn::MulAdd(hn::LoadU(d, a + k), hn::LoadU(d, gr + k), rest), out + k, stream);
      }
      for (; k < c; ++k) out[k] = a[k] * gr[k] + (b[k] * (xr[k] - mu[k]) + cc[k]);
    }
  }
  if (stream) hwy::FlushStream();
}

// ---- entry points ----

void ForwardTraining(const Shape& shape, const float* x, float* y, const ForwardOutputs& out) {
  const int64_t c = shape.c;
  const double m = double(shape.m());
  if (!rows_layout(shape) && nchw_plan(shape, 1).whole_channel()) {
    // Each channel in one unit: statistics, saved and running statistics and
    // y while the channel is still in cache.
    const int nt = threads_for(shape);
    const bool stream = stream_output(shape);
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
    const bool stream = stream_output(shape);
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
