// Backward for every element type: sum dy and sum dy * (x - mean) per channel
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
template <class T>
void DxSpan(const T* HWY_RESTRICT dy, const T* HWY_RESTRICT x, T* HWY_RESTRICT dx, int64_t len,
            param_t<T> mu, param_t<T> a, param_t<T> b, param_t<T> c, bool stream) {
  const DA<T> d;
  const int64_t N = int64_t(hn::Lanes(d));
  const VA<T> vmu = hn::Set(d, mu), va = hn::Set(d, a), vb = hn::Set(d, b), vc = hn::Set(d, c);
  const auto value = [&](VA<T> g, VA<T> xv) {
    return hn::MulAdd(va, g, hn::MulAdd(vb, hn::Sub(xv, vmu), vc));
  };
  int64_t j = 0;
  if (stream) {
    for (; j + N <= len; j += N) StoreT<true>(value(LoadT(d, dy + j), LoadT(d, x + j)), d, dx + j);
  } else {
    for (; j + N <= len; j += N) StoreT(value(LoadT(d, dy + j), LoadT(d, x + j)), d, dx + j);
  }
  if (j == len) return;
  if constexpr (kMaskedTail<T>) {
    const auto m = hn::FirstN(d, size_t(len - j));
    hn::BlendedStore(value(hn::MaskedLoad(m, d, dy + j), hn::MaskedLoad(m, d, x + j)), m, d,
                     dx + j);
  } else {
    for (; j < len; ++j) dx[j] = T(a * Widen(dy[j]) + (b * (Widen(x[j]) - mu) + c));
  }
}

// ---- NCHW (s > 1) ----

// sum dy and sum dy * (x - mu) of channel k over samples [i0, i1).
template <class T>
Pair NchwUnitDot(const Shape& shape, const T* HWY_RESTRICT dy, const T* HWY_RESTRICT x, int64_t k,
                 int64_t i0, int64_t i1, param_t<T> mu) {
  using P = param_t<T>;
  const DA<T> d;
  const VA<T> z = hn::Zero(d), vmu = hn::Set(d, mu);
  VA<T> s0 = z, s1 = z, q0 = z, q1 = z;
  P ts = 0, tq = 0;
  Pair total;
  ForPlanes<T>(
      shape, k, i0, i1,
      [&](int64_t j0, int64_t j1) {
        const VA<T> g0 = LoadT(d, dy + j0);
        s0 = hn::Add(s0, g0);
        q0 = hn::MulAdd(g0, hn::Sub(LoadT(d, x + j0), vmu), q0);
        if (j1 >= 0) {
          const VA<T> g1 = LoadT(d, dy + j1);
          s1 = hn::Add(s1, g1);
          q1 = hn::MulAdd(g1, hn::Sub(LoadT(d, x + j1), vmu), q1);
        }
      },
      [&](int64_t j) {
        ts += Widen(dy[j]);
        tq += Widen(dy[j]) * (Widen(x[j]) - mu);
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
template <int NV, class T>
void DotBlock(const T* HWY_RESTRICT dy, const T* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t r0,
              int64_t r1, const param_t<T>* HWY_RESTRICT mu, double* HWY_RESTRICT sum_dy,
              double* HWY_RESTRICT sum_dy_xmu) {
  const DA<T> d;
  const int64_t N = int64_t(hn::Lanes(d));
  VA<T> vmu[4], s[4], q[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    vmu[v] = v < NV ? hn::LoadU(d, mu + k0 + v * N) : hn::Zero(d);
    s[v] = hn::Zero(d);
    q[v] = hn::Zero(d);
  }
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    const int64_t re = std::min(r1, rb + kFlushRows);
    for (int64_t r = rb; r < re; ++r) {
      const T* HWY_RESTRICT xr = x + r * c + k0;
      const T* HWY_RESTRICT gr = dy + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const VA<T> g = LoadT(d, gr + v * N);
        s[v] = hn::Add(s[v], g);
        q[v] = hn::MulAdd(g, hn::Sub(LoadT(d, xr + v * N), vmu[v]), q[v]);
      }
    }
    FlushBlock<NV>(d, s, sum_dy + k0);
    FlushBlock<NV>(d, q, sum_dy_xmu + k0);
  }
}

// Per-channel sum dy and sum dy * (x - mu) of rows [r0, r1).
template <class T>
void RowsUnitDot(const T* dy, const T* x, const param_t<T>* mu, int64_t c, int64_t r0, int64_t r1,
                 double* sum_dy, double* sum_dy_xmu) {
  PrefetchRows(x, c, r0, r1);
  PrefetchRows(dy, c, r0, r1);
  std::fill(sum_dy, sum_dy + c, 0.0);
  std::fill(sum_dy_xmu, sum_dy_xmu + c, 0.0);
  const int64_t tail = ForBlocks<T>(
      c, [&]<int NV>(int64_t k0) { DotBlock<NV>(dy, x, c, k0, r0, r1, mu, sum_dy, sum_dy_xmu); });
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t k = tail; k < c; ++k) {
      sum_dy[k] += double(Widen(dy[r * c + k]));
      sum_dy_xmu[k] += double(Widen(dy[r * c + k])) * double(Widen(x[r * c + k]) - mu[k]);
    }
}

// ---- whole tensors ----

template <class T>
void ReduceAll(const Shape& shape, const T* dy, const T* x, const param_t<T>* mu, double* sum_dy,
               double* sum_dy_xmu) {
  const int nt = threads_for(shape, sizeof(T));
  const int64_t c = shape.c;
  if (!rows_layout(shape)) {
    const NchwPlan plan = nchw_plan(shape, 2, sizeof(T));
    const int64_t units = c * plan.groups;
    std::vector<Pair> part(static_cast<size_t>(units));
#pragma omp parallel for schedule(dynamic, channel_chunk(units, nt)) num_threads(nt)
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
  const int64_t rows = shape.m(), per = rows_per_unit(c, sizeof(T)), units = (rows + per - 1) / per;
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

template <class T>
void DxAll(const Shape& shape, const T* dy, const T* x, const param_t<T>* mu, const param_t<T>* a,
           const param_t<T>* b, const param_t<T>* cc, T* dx) {
  using P = param_t<T>;
  const int nt = threads_for(shape, sizeof(T));
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
    const DA<T> d;
    const int64_t N = int64_t(hn::Lanes(d));
    const int64_t rows = shape.m();
    const P* HWY_RESTRICT pm = mu;
    const P* HWY_RESTRICT pa = a;
    const P* HWY_RESTRICT pb = b;
    const P* HWY_RESTRICT pc = cc;
#pragma omp parallel for schedule(static) num_threads(nt) firstprivate(pm, pa, pb, pc)
    for (int64_t r = 0; r < rows; ++r) {
      const T* HWY_RESTRICT xr = x + r * c;
      const T* HWY_RESTRICT gr = dy + r * c;
      T* HWY_RESTRICT out = dx + r * c;
      int64_t k = 0;
      // stream implies aligned rows of whole vectors (stream_output).
      const auto vectors = [&](auto store) {
        for (; k + N <= c; k += N) {
          const VA<T> xm = hn::Sub(LoadT(d, xr + k), hn::LoadU(d, pm + k));
          const VA<T> rest = hn::MulAdd(hn::LoadU(d, pb + k), xm, hn::LoadU(d, pc + k));
          store(hn::MulAdd(hn::LoadU(d, pa + k), LoadT(d, gr + k), rest), out + k);
        }
      };
      if (stream) {
        vectors([&](VA<T> v, T* p) { StoreT<true>(v, d, p); });
      } else {
        vectors([&](VA<T> v, T* p) { StoreT(v, d, p); });
      }
      for (; k < c; ++k)
        out[k] = T(pa[k] * Widen(gr[k]) + (pb[k] * (Widen(xr[k]) - pm[k]) + pc[k]));
    }
  }
  if (stream) hwy::FlushStream();
}

// ---- column units (rows layouts with few rows) ----

// Reduction, finishing and dx for channels [k0, k0 + NV * N) over all m rows.
template <int NV, class T>
void ColumnBackward(const T* HWY_RESTRICT dy, const T* HWY_RESTRICT x, T* HWY_RESTRICT dx,
                    int64_t c, int64_t m, int64_t k0, const BackwardOutputs<param_t<T>>& out,
                    bool stream, param_t<T>* HWY_RESTRICT a, param_t<T>* HWY_RESTRICT b,
                    param_t<T>* HWY_RESTRICT cc) {
  const DA<T> d;
  const int64_t N = int64_t(hn::Lanes(d)), W = NV * N;
  double* sum_dy = scratch<double, 4>(c);
  double* sum_dy_xmu = scratch<double, 5>(c);
  std::fill(sum_dy + k0, sum_dy + k0 + W, 0.0);
  std::fill(sum_dy_xmu + k0, sum_dy_xmu + k0 + W, 0.0);
  DotBlock<NV>(dy, x, c, k0, 0, m, out.mean, sum_dy, sum_dy_xmu);
  for (int64_t k = k0; k < k0 + W; ++k)
    finish_backward_channel(out, double(m), k, sum_dy[k], sum_dy_xmu[k], a[k], b[k], cc[k]);
  if (!dx) return;
  VA<T> vmu[4], va[4], vb[4], vc[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const int64_t k = k0 + (v < NV ? v * N : 0);
    vmu[v] = hn::LoadU(d, out.mean + k);
    va[v] = hn::LoadU(d, a + k);
    vb[v] = hn::LoadU(d, b + k);
    vc[v] = hn::LoadU(d, cc + k);
  }
  for (int64_t r = 0; r < m; ++r) {
    const T* HWY_RESTRICT xr = x + r * c + k0;
    const T* HWY_RESTRICT gr = dy + r * c + k0;
    T* HWY_RESTRICT o = dx + r * c + k0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const VA<T> rest = hn::MulAdd(vb[v], hn::Sub(LoadT(d, xr + v * N), vmu[v]), vc[v]);
      const VA<T> val = hn::MulAdd(va[v], LoadT(d, gr + v * N), rest);
      if (stream) {
        StoreT<true>(val, d, o + v * N);
      } else {
        StoreT(val, d, o + v * N);
      }
    }
  }
}

template <class T>
void ColumnBackwardTail(const T* dy, const T* x, T* dx, int64_t c, int64_t m, int64_t k0,
                        const BackwardOutputs<param_t<T>>& out, param_t<T>* a, param_t<T>* b,
                        param_t<T>* cc) {
  for (int64_t k = k0; k < c; ++k) {
    const param_t<T> mu = out.mean[k];
    double sdy = 0, sdyxm = 0;
    for (int64_t r = 0; r < m; ++r) {
      sdy += double(Widen(dy[r * c + k]));
      sdyxm += double(Widen(dy[r * c + k])) * double(Widen(x[r * c + k]) - mu);
    }
    finish_backward_channel(out, double(m), k, sdy, sdyxm, a[k], b[k], cc[k]);
    if (dx)
      for (int64_t r = 0; r < m; ++r)
        dx[r * c + k] =
            T(a[k] * Widen(dy[r * c + k]) + (b[k] * (Widen(x[r * c + k]) - mu) + cc[k]));
  }
}

// ---- entry point ----

template <class T>
void Backward(const Shape& shape, const T* dy, const T* x, T* dx,
              const BackwardOutputs<param_t<T>>& out) {
  using P = param_t<T>;
  const int64_t c = shape.c;
  const double m = double(shape.m());
  const P* mu = out.mean;  // save_mean is P: x - mu needs no correction
  if (dx && !rows_layout(shape) && nchw_plan(shape, 2, sizeof(T)).whole_channel()) {
    const int nt = threads_for(shape, sizeof(T));
    const bool stream = stream_output(shape, dx);
    const int64_t n = shape.n, s = shape.s;
#pragma omp parallel for schedule(dynamic, channel_chunk(c, nt)) num_threads(nt)
    for (int64_t k = 0; k < c; ++k) {
      const Pair sums = NchwUnitDot(shape, dy, x, k, 0, n, mu[k]);
      P a, b, cc;
      finish_backward_channel(out, m, k, sums.first, sums.second, a, b, cc);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t base = (i * c + k) * s;
        DxSpan(dy + base, x + base, dx + base, s, mu[k], a, b, cc, stream);
      }
    }
    if (stream) hwy::FlushStream();
    return;
  }
  // Column units only under kRowSplitBytes a row: over wider rows the
  // row units below (sums, then dx row by row) were 1.03x to 1.23x faster
  // on (64,512,7,7) and (32,256,14,14) NHWC (fast_plan.hpp).
  if (rows_layout(shape) && column_units(shape, 2) && c * int64_t(sizeof(T)) < kRowSplitBytes) {
    const bool stream = dx && stream_output(shape, dx);
    const int64_t rows = shape.m();
    std::vector<P> a(static_cast<size_t>(c)), b(static_cast<size_t>(c)), cc(static_cast<size_t>(c));
    ForColumns<T>(
        shape,
        [&]<int NV>(int64_t k0) {
          ColumnBackward<NV>(dy, x, dx, c, rows, k0, out, stream, a.data(), b.data(), cc.data());
        },
        [&](int64_t k0) {
          ColumnBackwardTail(dy, x, dx, c, rows, k0, out, a.data(), b.data(), cc.data());
        });
    if (stream) hwy::FlushStream();
    return;
  }
  std::vector<double> sum_dy(static_cast<size_t>(c)), sum_dy_xmu(static_cast<size_t>(c));
  ReduceAll(shape, dy, x, mu, sum_dy.data(), sum_dy_xmu.data());
  std::vector<P> a(static_cast<size_t>(c)), b(static_cast<size_t>(c)), cc(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k)
    finish_backward_channel(out, m, k, sum_dy[size_t(k)], sum_dy_xmu[size_t(k)], a[size_t(k)],
                            b[size_t(k)], cc[size_t(k)]);
  if (dx) DxAll(shape, dy, x, mu, a.data(), b.data(), cc.data(), dx);
}

#define BNORM_BACKWARD(T, S, name)                                                       \
  void ReduceAll##S(const Shape& shape, const T* dy, const T* x, const param_t<T>* mu,   \
                    double* sum_dy, double* sum_dy_xmu) {                                \
    ReduceAll<T>(shape, dy, x, mu, sum_dy, sum_dy_xmu);                                  \
  }                                                                                      \
  void DxAll##S(const Shape& shape, const T* dy, const T* x, const param_t<T>* mu,       \
                const param_t<T>* a, const param_t<T>* b, const param_t<T>* cc, T* dx) { \
    DxAll<T>(shape, dy, x, mu, a, b, cc, dx);                                            \
  }                                                                                      \
  void Backward##S(const Shape& shape, const T* dy, const T* x, T* dx,                   \
                   const BackwardOutputs<param_t<T>>& out) {                             \
    Backward<T>(shape, dy, x, dx, out);                                                  \
  }
BNORM_FOR_EACH_TYPE(BNORM_BACKWARD)
#undef BNORM_BACKWARD

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bnorm::cpu {

#define BNORM_EXPORT(T, S, name) \
  HWY_EXPORT(ReduceAll##S);      \
  HWY_EXPORT(DxAll##S);          \
  HWY_EXPORT(Backward##S);
BNORM_FOR_EACH_TYPE(BNORM_EXPORT)
#undef BNORM_EXPORT

template <class T>
void backward_reduce_fast(const Shape& shape, const T* dy, const T* x, const param_t<T>* mu,
                          double* sum_dy, double* sum_dy_xmu) {
  BNORM_DISPATCH(ReduceAll, shape, dy, x, mu, sum_dy, sum_dy_xmu);
}

template <class T>
void backward_dx_fast(const Shape& shape, const T* dy, const T* x, const param_t<T>* mu,
                      const param_t<T>* a, const param_t<T>* b, const param_t<T>* c, T* dx) {
  BNORM_DISPATCH(DxAll, shape, dy, x, mu, a, b, c, dx);
}

template <class T>
void backward_fast(const Shape& shape, const T* dy, const T* x, T* dx,
                   const BackwardOutputs<param_t<T>>& out) {
  BNORM_DISPATCH(Backward, shape, dy, x, dx, out);
}

#define BNORM_INSTANTIATE(T, S, name)                                                             \
  template void backward_reduce_fast<T>(const Shape&, const T*, const T*, const param_t<T>*,      \
                                        double*, double*);                                        \
  template void backward_dx_fast<T>(const Shape&, const T*, const T*, const param_t<T>*,          \
                                    const param_t<T>*, const param_t<T>*, const param_t<T>*, T*); \
  template void backward_fast<T>(const Shape&, const T*, const T*, T*,                            \
                                 const BackwardOutputs<param_t<T>>&);
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm::cpu
#endif  // HWY_ONCE
