// Training forward for float32 tensors: statistics, saved and running
// statistics, and y in as few passes over memory as fit. Where a unit holds
// whole channels (NCHW channels up to 2 MiB, or blocks of up to 4 vectors of
// channels of a rows layout with few rows), the normalize pass rereads them
// from cache, so DRAM sees x once; otherwise the statistics of all units are
// merged first (fast_statistics.cpp) and the normalize pass rereads x
// (fast_normalize.cpp).

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/fast_forward.cpp"
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

// ---- column units (rows layouts with few rows) ----

// dev[k] = sum (x - x_0k), sq[k] = sum (x - x_0k)^2 over rows [0, m) for
// channels [k0, k0 + NV * N), x_0k being the channel's first value. Widened
// to double, x - x_0k is exact and the sums lose only double rounding; the
// cancellation in sq - dev^2 / m grows like 1 + (x_0k - mean)^2 / var, which
// double precision absorbs. One read of the block, where the exact float
// two-pass needs two (and with wide rows the second comes from L3).
template <int NV>
void ShiftedBlock(const float* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t m,
                  double* HWY_RESTRICT dev, double* HWY_RESTRICT sq) {
#if HWY_TARGET == HWY_SCALAR
  (void)x, (void)c, (void)k0, (void)m, (void)dev, (void)sq;
#else
  const DF d;
  const hn::Half<DF> dh;
  const hn::Rebind<double, decltype(dh)> dd;
  using VD = hn::Vec<decltype(dd)>;
  const int64_t N = int64_t(hn::Lanes(d)), H = int64_t(hn::Lanes(dd));
  VD shift[8], s[8], q[8];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const VF x0 = hn::LoadU(d, x + k0 + (v < NV ? v * N : 0));
    shift[2 * v] = hn::PromoteTo(dd, hn::LowerHalf(dh, x0));
    shift[2 * v + 1] = hn::PromoteTo(dd, hn::UpperHalf(dh, x0));
  }
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) s[v] = q[v] = hn::Zero(dd);
  for (int64_t r = 0; r < m; ++r) {
    const float* HWY_RESTRICT row = x + r * c + k0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const VF xv = hn::LoadU(d, row + v * N);
      const VD lo = hn::Sub(hn::PromoteTo(dd, hn::LowerHalf(dh, xv)), shift[2 * v]);
      const VD hi = hn::Sub(hn::PromoteTo(dd, hn::UpperHalf(dh, xv)), shift[2 * v + 1]);
      s[2 * v] = hn::Add(s[2 * v], lo);
      q[2 * v] = hn::MulAdd(lo, lo, q[2 * v]);
      s[2 * v + 1] = hn::Add(s[2 * v + 1], hi);
      q[2 * v + 1] = hn::MulAdd(hi, hi, q[2 * v + 1]);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < 2 * NV; ++v) {
    hn::StoreU(s[v], dd, dev + k0 + v * H);
    hn::StoreU(q[v], dd, sq + k0 + v * H);
  }
#endif
}

// Statistics, finishing and y for channels [k0, k0 + NV * N) over all m rows.
template <int NV>
void ColumnForward(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t c, int64_t m,
                   int64_t k0, const ForwardOutputs& out, bool stream, float* HWY_RESTRICT mu,
                   float* HWY_RESTRICT scale, float* HWY_RESTRICT shift) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d)), W = NV * N;
  double* sum = scratch<double, 4>(c);
  double* dev = scratch<double, 5>(c);
  double* sq = scratch<double, 6>(c);
  std::fill(sum + k0, sum + k0 + W, 0.0);
  std::fill(dev + k0, dev + k0 + W, 0.0);
  std::fill(sq + k0, sq + k0 + W, 0.0);
  const int64_t pilot = pilot_rows(m);
  if (pilot == m && HWY_TARGET != HWY_SCALAR) {
    // Short columns (the float path would take the exact two-pass): one
    // pass about the first row, in double.
    std::copy(x + k0, x + k0 + W, mu + k0);
    ShiftedBlock<NV>(x, c, k0, m, dev, sq);
  } else {
    // Pilot-centered single pass, as RowsUnitMoments.
    SumBlock<NV>(x, c, k0, 0, pilot, sum);
    for (int64_t k = k0; k < k0 + W; ++k) mu[k] = float(sum[k] / double(pilot));
    CenteredBlock<NV>(x, c, k0, 0, m, mu, dev, sq);
  }
  for (int64_t k = k0; k < k0 + W; ++k) {
    const double e = dev[k] / double(m);
    finish_forward_channel(out, double(m), k, double(mu[k]) + e, (sq[k] - dev[k] * e) / double(m),
                           mu[k], scale[k], shift[k]);
  }
  if (!y) return;
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
                       const ForwardOutputs& out, float* mu, float* scale, float* shift) {
  const int64_t pilot = pilot_rows(m);
  for (int64_t k = k0; k < c; ++k) {
    double sum = 0;
    for (int64_t r = 0; r < pilot; ++r) sum += double(x[r * c + k]);
    mu[k] = float(sum / double(pilot));
    double dev = 0, sq = 0;
    for (int64_t r = 0; r < m; ++r) {
      const double e = double(x[r * c + k] - mu[k]);
      dev += e;
      sq += e * e;
    }
    const double e = dev / double(m);
    finish_forward_channel(out, double(m), k, double(mu[k]) + e, (sq - dev * e) / double(m), mu[k],
                           scale[k], shift[k]);
    if (y)
      for (int64_t r = 0; r < m; ++r) y[r * c + k] = (x[r * c + k] - mu[k]) * scale[k] + shift[k];
  }
}

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
    std::vector<float> mu(static_cast<size_t>(c)), scale(static_cast<size_t>(c)),
        shift(static_cast<size_t>(c));
    // Rows of a page or more: the normalize pass goes row by row instead of
    // down the column blocks, where every row would be a new page and the
    // hardware prefetchers would not follow.
    const bool split = c * int64_t(sizeof(float)) >= 4096;
    float* yc = split ? nullptr : y;
    ForColumns(
        shape,
        [&]<int NV>(int64_t k0) {
          ColumnForward<NV>(x, yc, c, rows, k0, out, stream, mu.data(), scale.data(), shift.data());
        },
        [&](int64_t k0) {
          ColumnForwardTail(x, yc, c, rows, k0, out, mu.data(), scale.data(), shift.data());
        });
    if (split) {
      NormalizeAll(shape, x, mu.data(), scale.data(), shift.data(), y);
      return;
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

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bnorm::cpu {

HWY_EXPORT(ForwardTraining);

void forward_training_f32(const Shape& shape, const float* x, float* y, const ForwardOutputs& out) {
  HWY_DYNAMIC_DISPATCH(ForwardTraining)(shape, x, y, out);
}

}  // namespace bnorm::cpu
#endif  // HWY_ONCE
