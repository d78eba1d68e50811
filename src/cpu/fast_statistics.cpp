// Per-channel statistics (moments_fast), and the
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
// pass that rereads the unit from cache (of values scaled by kScale).
template <int kScale, class T>
Moments NchwUnitPasses(const Shape& shape, const T* HWY_RESTRICT x, int64_t k, int64_t i0,
                       int64_t i1) {
  using P = param_t<T>;
  const DA<T> d;
  const VA<T> z = hn::Zero(d);
  VA<T> a0 = z, a1 = z;
  P ta = 0;
  double sum = 0;
  ForPlanes<T>(
      shape, k, i0, i1,
      [&](int64_t j0, int64_t j1) {
        a0 = hn::Add(a0, LoadScaled<kScale>(d, x + j0));
        if (j1 >= 0) a1 = hn::Add(a1, LoadScaled<kScale>(d, x + j1));
      },
      [&](int64_t j) { ta += WidenScaled<kScale>(x[j]); },
      [&] {
        sum += Total(d, a0, a1, z, z) + double(ta);
        a0 = a1 = z;
        ta = 0;
      });
  const double count = double((i1 - i0) * shape.s);
  const P mu = P(sum / count);
  const VA<T> vmu = hn::Set(d, mu);
  VA<T> s0 = z, s1 = z, q0 = z, q1 = z;
  P ts = 0, tq = 0;
  double dev = 0, sq = 0;
  ForPlanes<T>(
      shape, k, i0, i1,
      [&](int64_t j0, int64_t j1) {
        const VA<T> e0 = hn::Sub(LoadScaled<kScale>(d, x + j0), vmu);
        s0 = hn::Add(s0, e0);
        q0 = hn::MulAdd(e0, e0, q0);
        if (j1 >= 0) {
          const VA<T> e1 = hn::Sub(LoadScaled<kScale>(d, x + j1), vmu);
          s1 = hn::Add(s1, e1);
          q1 = hn::MulAdd(e1, e1, q1);
        }
      },
      [&](int64_t j) {
        const P e = WidenScaled<kScale>(x[j]) - mu;
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

template <class T>
Moments NchwUnitMoments(const Shape& shape, const T* HWY_RESTRICT x, int64_t k, int64_t i0,
                        int64_t i1) {
  using P = param_t<T>;
  const Moments mo = NchwUnitPasses<0>(shape, x, k, i0, i1);
  switch (RescaleOf<P>(mo)) {
    case -1:
      return Rescued<-1, P>(mo, NchwUnitPasses<-1>(shape, x, k, i0, i1));
    case 1:
      return Rescued<1, P>(mo, NchwUnitPasses<1>(shape, x, k, i0, i1));
    default:
      return mo;
  }
}

// Per-channel mean and M2 of rows [r0, r1), centered on a pilot mean mu: the
// mean of the unit's first pilot_rows rows, whose sum pass leaves them in
// cache (for a long unit, one pass over the rest). Those p rows average to mu, so
// (mu - mean)^2 <= var * rows / p: the cancellation in
// M2 = sum (x - mu)^2 - (sum (x - mu))^2 / rows is bounded whatever the data,
// unlike a raw sum of squares.
template <int kScale, class T>
void RowsUnitPasses(const T* x, int64_t c, int64_t r0, int64_t r1, double* mean, double* m2,
                    param_t<T>* mu, double* dev) {
  using P = param_t<T>;
  PrefetchRows(x, c, r0, r1);
  std::fill(mean, mean + c, 0.0);
  std::fill(m2, m2 + c, 0.0);
  std::fill(dev, dev + c, 0.0);
  const int64_t pilot_end = r0 + pilot_rows(r1 - r0);
  const int64_t tail = ForBlocks<T>(
      c, [&]<int NV>(int64_t k0) { SumBlock<NV, kScale>(x, c, k0, r0, pilot_end, mean); });
  for (int64_t r = r0; r < pilot_end; ++r)
    for (int64_t k = tail; k < c; ++k) mean[k] += double(WidenScaled<kScale>(x[r * c + k]));
  const double inv_pilot = 1.0 / double(pilot_end - r0);
  for (int64_t k = 0; k < c; ++k) mu[k] = P(mean[k] * inv_pilot);
  ForBlocks<T>(
      c, [&]<int NV>(int64_t k0) { CenteredBlock<NV, kScale>(x, c, k0, r0, r1, mu, dev, m2); });
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t k = tail; k < c; ++k) {
      const double e = double(WidenScaled<kScale>(x[r * c + k]) - mu[k]);
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

// RowsUnitPasses, with the range fallbacks for the channels that need them
// (scaling the others could flush their small values to zero, or overflow).
template <class T>
void RowsUnitMoments(const T* x, int64_t c, int64_t r0, int64_t r1, double* mean, double* m2,
                     param_t<T>* mu, double* dev) {
  using P = param_t<T>;
  RowsUnitPasses<0>(x, c, r0, r1, mean, m2, mu, dev);
  const double count = double(r1 - r0);
  bool down = false, up = false;
  for (int64_t k = 0; k < c; ++k) {
    const int r = RescaleOf<P>({count, mean[k], m2[k]});
    down |= r < 0;
    up |= r > 0;
  }
  if (!down && !up) return;
  const size_t n = size_t(c);
  std::vector<double> scaled_mean(n), scaled_m2(n);
  const auto redo = [&]<int kScale>() {
    RowsUnitPasses<kScale>(x, c, r0, r1, scaled_mean.data(), scaled_m2.data(), mu, dev);
    for (int64_t k = 0; k < c; ++k) {
      const Moments first{count, mean[k], m2[k]};
      if (RescaleOf<P>(first) != kScale) continue;
      const Moments mo =
          Rescued<kScale, P>(first, {count, scaled_mean[size_t(k)], scaled_m2[size_t(k)]});
      mean[k] = mo.mean;
      m2[k] = mo.m2;
    }
  };
  if (down) redo.template operator()<-1>();
  if (up) redo.template operator()<1>();
}

template <class T>
void StatsAll(const Shape& shape, const T* x, double* mean, double* var) {
  const int nt = threads_for(shape, sizeof(T));
  const int64_t c = shape.c;
  if (!rows_layout(shape)) {
    const NchwPlan plan = nchw_plan(shape, 1, sizeof(T));
    const int64_t units = c * plan.groups;
    std::vector<Moments> part(static_cast<size_t>(units));
#pragma omp parallel for schedule(dynamic, channel_chunk(units, nt)) num_threads(nt)
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
  const int64_t rows = shape.m(), per = rows_per_unit(c, sizeof(T)), units = (rows + per - 1) / per;
  double* part_mean = scratch<double, 0>(units * c);
  double* part_m2 = scratch<double, 1>(units * c);
#pragma omp parallel num_threads(nt)
  {
    param_t<T>* mu = scratch<param_t<T>, 2>(c);
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

#define BNORM_STATS(T, S, name)                                                              \
  template Moments NchwUnitMoments<T>(const Shape&, const T* HWY_RESTRICT, int64_t, int64_t, \
                                      int64_t);                                              \
  template void StatsAll<T>(const Shape&, const T*, double*, double*);                       \
  void StatsAll##S(const Shape& shape, const T* x, double* mean, double* var) {              \
    StatsAll<T>(shape, x, mean, var);                                                        \
  }
BNORM_FOR_EACH_TYPE(BNORM_STATS)
#undef BNORM_STATS

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bnorm::cpu {

#define BNORM_EXPORT(T, S, name) HWY_EXPORT(StatsAll##S);
BNORM_FOR_EACH_TYPE(BNORM_EXPORT)
#undef BNORM_EXPORT

template <class T>
void moments_fast(const Shape& shape, const T* x, double* mean, double* var) {
  BNORM_DISPATCH(StatsAll, shape, x, mean, var);
}

#define BNORM_INSTANTIATE(T, S, name) \
  template void moments_fast<T>(const Shape&, const T*, double*, double*);
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm::cpu
#endif  // HWY_ONCE
