// Training forward for every element type: statistics, saved and running
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
template <int NV, class T>
void ShiftedBlock(const T* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t m,
                  double* HWY_RESTRICT dev, double* HWY_RESTRICT sq) {
  if constexpr (std::is_same_v<T, double>) {
    // Already double: x - x_0k is not exact, but the centered pass of the
    // other units is not either; the sums keep double accuracy.
    const DA<T> d;
    using VD = VA<T>;
    const int64_t N = int64_t(hn::Lanes(d));
    VD shift[4], s[4], q[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      shift[v] = hn::LoadU(d, x + k0 + (v < NV ? v * N : 0));
      s[v] = q[v] = hn::Zero(d);
    }
    for (int64_t r = 0; r < m; ++r) {
      const T* HWY_RESTRICT row = x + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const VD e = hn::Sub(hn::LoadU(d, row + v * N), shift[v]);
        s[v] = hn::Add(s[v], e);
        q[v] = hn::MulAdd(e, e, q[v]);
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      hn::StoreU(s[v], d, dev + k0 + v * N);
      hn::StoreU(q[v], d, sq + k0 + v * N);
    }
  } else {
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
      const VF x0 = LoadT(d, x + k0 + (v < NV ? v * N : 0));
      shift[2 * v] = hn::PromoteTo(dd, hn::LowerHalf(dh, x0));
      shift[2 * v + 1] = hn::PromoteTo(dd, hn::UpperHalf(dh, x0));
    }
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) s[v] = q[v] = hn::Zero(dd);
    for (int64_t r = 0; r < m; ++r) {
      const T* HWY_RESTRICT row = x + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const VF xv = LoadT(d, row + v * N);
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
}

// The range fallbacks (fast_common-inl.h) for the channels of a column
// block whose moments mo call for them: the pilot-centered passes again on
// scaled values. Out of line, so that ColumnForward's loops compile as
// before.
template <int NV, int kScale, class T>
HWY_NOINLINE void ColumnRescale(const T* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t m,
                                Moments* mo) {
  using P = param_t<T>;
  const int64_t W = NV * LanesOf<T>(), pilot = pilot_rows(m);
  std::vector<double> sum(static_cast<size_t>(c)), dev(static_cast<size_t>(c)),
      sq(static_cast<size_t>(c));
  std::vector<P> mu(static_cast<size_t>(c));
  SumBlock<NV, kScale>(x, c, k0, 0, pilot, sum.data());
  for (int64_t k = k0; k < k0 + W; ++k) mu[size_t(k)] = P(sum[size_t(k)] / double(pilot));
  CenteredBlock<NV, kScale>(x, c, k0, 0, m, mu.data(), dev.data(), sq.data());
  for (int64_t k = k0; k < k0 + W; ++k) {
    if (RescaleOf<P>(mo[k - k0]) != kScale) continue;
    const double e = dev[size_t(k)] / double(m);
    mo[k - k0] = Rescued<kScale, P>(
        mo[k - k0], {double(m), double(mu[size_t(k)]) + e, sq[size_t(k)] - dev[size_t(k)] * e});
  }
}

// Statistics, finishing and y for channels [k0, k0 + NV * N) over all m rows.
template <int NV, class T>
void ColumnForward(const T* HWY_RESTRICT x, T* HWY_RESTRICT y, int64_t c, int64_t m, int64_t k0,
                   const ForwardOutputs<param_t<T>>& out, bool stream, param_t<T>* HWY_RESTRICT mu,
                   param_t<T>* HWY_RESTRICT scale, param_t<T>* HWY_RESTRICT shift) {
  using P = param_t<T>;
  const DA<T> d;
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
    for (int64_t k = k0; k < k0 + W; ++k) mu[k] = Widen(x[k]);
    ShiftedBlock<NV>(x, c, k0, m, dev, sq);
  } else {
    // Pilot-centered single pass, as RowsUnitMoments.
    SumBlock<NV>(x, c, k0, 0, pilot, sum);
    for (int64_t k = k0; k < k0 + W; ++k) mu[k] = P(sum[k] / double(pilot));
    CenteredBlock<NV>(x, c, k0, 0, m, mu, dev, sq);
  }
  Moments mo[4 * hn::MaxLanes(DA<T>())];
  bool down = false, up = false;
  for (int64_t k = k0; k < k0 + W; ++k) {
    const double e = dev[k] / double(m);
    mo[k - k0] = {double(m), double(mu[k]) + e, sq[k] - dev[k] * e};
    const int rescale = RescaleOf<P>(mo[k - k0]);
    down |= rescale < 0;
    up |= rescale > 0;
  }
  if (down) ColumnRescale<NV, -1>(x, c, k0, m, mo);
  if (up) ColumnRescale<NV, 1>(x, c, k0, m, mo);
  for (int64_t k = k0; k < k0 + W; ++k)
    finish_forward_channel(out, double(m), k, mo[k - k0].mean, mo[k - k0].m2 / double(m), mu[k],
                           scale[k], shift[k]);
  if (!y) return;
  VA<T> vmu[4], va[4], vb[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const int64_t k = k0 + (v < NV ? v * N : 0);
    vmu[v] = hn::LoadU(d, mu + k);
    va[v] = hn::LoadU(d, scale + k);
    vb[v] = hn::LoadU(d, shift + k);
  }
  for (int64_t r = 0; r < m; ++r) {
    const T* HWY_RESTRICT xr = x + r * c + k0;
    T* HWY_RESTRICT yr = y + r * c + k0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const VA<T> o = hn::MulAdd(hn::Sub(LoadT(d, xr + v * N), vmu[v]), va[v], vb[v]);
      if (stream) {
        StoreT<true>(o, d, yr + v * N);
      } else {
        StoreT(o, d, yr + v * N);
      }
    }
  }
}

// The channels past the last whole vector, in scalar code, same formulas.
template <class T>
void ColumnForwardTail(const T* x, T* y, int64_t c, int64_t m, int64_t k0,
                       const ForwardOutputs<param_t<T>>& out, param_t<T>* mu, param_t<T>* scale,
                       param_t<T>* shift) {
  using P = param_t<T>;
  const int64_t pilot = pilot_rows(m);
  for (int64_t k = k0; k < c; ++k) {
    double sum = 0;
    for (int64_t r = 0; r < pilot; ++r) sum += double(Widen(x[r * c + k]));
    mu[k] = P(sum / double(pilot));
    double dev = 0, sq = 0;
    for (int64_t r = 0; r < m; ++r) {
      // In double: no overflow for the 32- and 16-bit types.
      const double e = double(Widen(x[r * c + k])) - double(mu[k]);
      dev += e;
      sq += e * e;
    }
    const double e = dev / double(m);
    finish_forward_channel(out, double(m), k, double(mu[k]) + e, (sq - dev * e) / double(m), mu[k],
                           scale[k], shift[k]);
    if (y)
      for (int64_t r = 0; r < m; ++r)
        y[r * c + k] = T((Widen(x[r * c + k]) - mu[k]) * scale[k] + shift[k]);
  }
}

template <class T>
void ForwardTraining(const Shape& shape, const T* x, T* y, const ForwardOutputs<param_t<T>>& out) {
  using P = param_t<T>;
  const int64_t c = shape.c;
  const double m = double(shape.m());
  if (!rows_layout(shape) && nchw_plan(shape, 1, sizeof(T)).whole_channel()) {
    // Each channel in one unit: statistics, saved and running statistics and
    // y while the channel is still in cache.
    const int nt = threads_for(shape, sizeof(T));
    const bool stream = stream_output(shape, y);
    const int64_t n = shape.n, s = shape.s;
#pragma omp parallel for schedule(dynamic, channel_chunk(c, nt)) num_threads(nt)
    for (int64_t k = 0; k < c; ++k) {
      const Moments mo = NchwUnitMoments(shape, x, k, 0, n);
      P mu, scale, shift;
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
    std::vector<P> mu(static_cast<size_t>(c)), scale(static_cast<size_t>(c)),
        shift(static_cast<size_t>(c));
    // Rows of kRowSplitBytes or more: the normalize pass goes row by row
    // instead of down the column blocks, where the hardware prefetchers
    // would not follow (fast_plan.hpp).
    const bool split = c * int64_t(sizeof(T)) >= kRowSplitBytes;
    T* yc = split ? nullptr : y;
    ForColumns<T>(
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
  std::vector<P> mu(static_cast<size_t>(c)), scale(static_cast<size_t>(c)),
      shift(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k)
    finish_forward_channel(out, m, k, mean[size_t(k)], var[size_t(k)], mu[size_t(k)],
                           scale[size_t(k)], shift[size_t(k)]);
  NormalizeAll(shape, x, mu.data(), scale.data(), shift.data(), y);
}

#define BNORM_FORWARD(T, S, name)                                  \
  void ForwardTraining##S(const Shape& shape, const T* x, T* y,    \
                          const ForwardOutputs<param_t<T>>& out) { \
    ForwardTraining<T>(shape, x, y, out);                          \
  }
BNORM_FOR_EACH_TYPE(BNORM_FORWARD)
#undef BNORM_FORWARD

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bnorm::cpu {

#define BNORM_EXPORT(T, S, name) HWY_EXPORT(ForwardTraining##S);
BNORM_FOR_EACH_TYPE(BNORM_EXPORT)
#undef BNORM_EXPORT

template <class T>
void forward_training_fast(const Shape& shape, const T* x, T* y,
                           const ForwardOutputs<param_t<T>>& out) {
  BNORM_DISPATCH(ForwardTraining, shape, x, y, out);
}

#define BNORM_INSTANTIATE(T, S, name)                                \
  template void forward_training_fast<T>(const Shape&, const T*, T*, \
                                         const ForwardOutputs<param_t<T>>&);
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm::cpu
#endif  // HWY_ONCE
