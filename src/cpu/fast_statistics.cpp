// Per-channel statistics of float32 tensors (moments_f32), and the
// statistics pass of the training forward where a channel does not fit one
// unit. Two passes per unit, units merged with Chan's formula in unit order.
//
// NCHW (s > 1): each channel is n planes of s contiguous values; vectors run
// along a plane, a unit is a whole channel or a group of its samples, and the
// centered pass rereads the unit from cache. NHWC and 2-D: rows of c
// contiguous values; vectors run across channels, a unit is a block of rows,
// centered on a pilot mean.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/fast_statistics.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// clang-format off
#include <hwy/highway.h>
#include "src/cpu/fast_common-inl.h"
// clang-format on

#include <algorithm>
#include <cstdint>
#include <vector>

HWY_BEFORE_NAMESPACE();
namespace bnorm::cpu {
namespace HWY_NAMESPACE {

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

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bnorm::cpu {

HWY_EXPORT(StatsAll);

void moments_f32(const Shape& shape, const float* x, double* mean, double* var) {
  HWY_DYNAMIC_DISPATCH(StatsAll)(shape, x, mean, var);
}

}  // namespace bnorm::cpu
#endif  // HWY_ONCE
