// Backward for float32 tensors: sum dy and sum dy * (x - mean) per channel
// (dgamma and dbeta come out of it), then dx = a * dy + b * (x - mean) + c.
// Where a unit holds whole channels (NCHW channels whose x and dy fit 2 MiB,
// or channel blocks of a rows layout with few rows), the dx pass rereads x
// and dy from cache; otherwise the reductions of all units are merged first
// and the dx pass rereads both.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/fast_backward.cpp"
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

// Reduction, finishing and dx for channels [k0, k0 + NV * N) over all m rows.
template <int NV>
void ColumnBackward(const float* HWY_RESTRICT dy, const float* HWY_RESTRICT x,
                    float* HWY_RESTRICT dx, int64_t c, int64_t m, int64_t k0,
                    const BackwardOutputs& out, bool stream, float* HWY_RESTRICT a,
                    float* HWY_RESTRICT b, float* HWY_RESTRICT cc) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d)), W = NV * N;
  double* sum_dy = scratch<double, 4>(c);
  double* sum_dy_xmu = scratch<double, 5>(c);
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
                        int64_t k0, const BackwardOutputs& out, float* a, float* b, float* cc) {
  for (int64_t k = k0; k < c; ++k) {
    const float mu = out.mean[k];
    double sdy = 0, sdyxm = 0;
    for (int64_t r = 0; r < m; ++r) {
      sdy += double(dy[r * c + k]);
      sdyxm += double(dy[r * c + k]) * double(x[r * c + k] - mu);
    }
    finish_backward_channel(out, double(m), k, sdy, sdyxm, a[k], b[k], cc[k]);
    if (dx)
      for (int64_t r = 0; r < m; ++r)
        dx[r * c + k] = a[k] * dy[r * c + k] + (b[k] * (x[r * c + k] - mu) + cc[k]);
  }
}

// ---- entry point ----

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
    std::vector<float> a(static_cast<size_t>(c)), b(static_cast<size_t>(c)),
        cc(static_cast<size_t>(c));
    // Rows of a page or more: dx goes row by row (DxAll), as in the forward.
    const bool split = c * int64_t(sizeof(float)) >= 4096;
    float* dxc = split ? nullptr : dx;
    ForColumns(
        shape,
        [&]<int NV>(int64_t k0) {
          ColumnBackward<NV>(dy, x, dxc, c, rows, k0, out, stream, a.data(), b.data(), cc.data());
        },
        [&](int64_t k0) {
          ColumnBackwardTail(dy, x, dxc, c, rows, k0, out, a.data(), b.data(), cc.data());
        });
    if (split && dx) {
      DxAll(shape, dy, x, mu, a.data(), b.data(), cc.data(), dx);
      return;
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

HWY_EXPORT(ReduceAll);
HWY_EXPORT(DxAll);
HWY_EXPORT(Backward);

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
