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
