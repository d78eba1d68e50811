// Fused kernels for every element type: the forward's epilogue
// y = act((x - mu) * scale + shift + r) in one read of x (and r) and one
// write of y, and the backward's two passes with the activation's mask
// applied on the fly (dz = dy * act'(y) is never stored unless dresidual is
// asked for).
//
// Determinism: the sums are accumulated in units fixed by the shape (NCHW:
// a channel, or a group of its samples, merged in order; rows layouts: row
// by row within a block of channels), so results do not depend on the
// thread count. Vector partial sums are carried in P for at most kBlock
// values (NCHW, and kPlaneFlush within a long plane) or kFlushRows rows,
// then in double.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/fast_fused.cpp"
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

constexpr int kIdentity = 0, kRelu = 1, kLeaky = 2;

// act(z). z < 0 selects the negative branch, so a NaN passes through.
template <int A, class D>
HWY_INLINE hn::Vec<D> ActV(D d, hn::Vec<D> z, hn::Vec<D> slope) {
  if constexpr (A == kIdentity) {
    return z;
  } else if constexpr (A == kRelu) {
    return hn::IfThenElse(hn::Lt(z, hn::Zero(d)), hn::Zero(d), z);
  } else {
    return hn::IfThenElse(hn::Lt(z, hn::Zero(d)), hn::Mul(z, slope), z);
  }
}
template <int A, class P>
HWY_INLINE P ActS(P z, P slope) {
  if constexpr (A == kIdentity) return z;
  if constexpr (A == kRelu) return z < 0 ? P(0) : z;
  return z < 0 ? z * slope : z;
}

// dz = dy * act'(z) read off y: 1 where y > 0, else 0 (relu) or slope.
template <int A, class D>
HWY_INLINE hn::Vec<D> MaskV(D d, hn::Vec<D> dy, hn::Vec<D> y, hn::Vec<D> slope) {
  if constexpr (A == kIdentity) {
    return dy;
  } else if constexpr (A == kRelu) {
    return hn::IfThenElseZero(hn::Gt(y, hn::Zero(d)), dy);
  } else {
    return hn::IfThenElse(hn::Gt(y, hn::Zero(d)), dy, hn::Mul(dy, slope));
  }
}
template <int A, class P>
HWY_INLINE P MaskS(P dy, P y, P slope) {
  if constexpr (A == kIdentity) return dy;
  if constexpr (A == kRelu) return y > 0 ? dy : P(0);
  return y > 0 ? dy : dy * slope;
}

// act^-1(y) for the invertible activations (inv_slope = 1 / slope).
template <int A, class D>
HWY_INLINE hn::Vec<D> InvV(D d, hn::Vec<D> y, hn::Vec<D> inv_slope) {
  if constexpr (A == kLeaky) {
    return hn::IfThenElse(hn::Gt(y, hn::Zero(d)), y, hn::Mul(y, inv_slope));
  } else {
    return y;
  }
}
template <int A, class P>
HWY_INLINE P InvS(P y, P inv_slope) {
  if constexpr (A == kLeaky) return y > 0 ? y : y * inv_slope;
  return y;
}

// Calls vec(e, pv) for whole vectors of elements starting at e (pv: the
// four channel parameters as vectors) and one(e, k) for the rest, in
// parallel; every element once.
template <class T, class Vec, class One>
void ForElements(const FusedArgs<T>& a, Vec&& vec, One&& one) {
  const Shape& shape = a.shape;
  const DA<T> d;
  const int64_t N = int64_t(hn::Lanes(d));
  const int64_t c = shape.c;
  const int nt = threads_for(shape, sizeof(T));
  const auto* const* p = a.p;
  if (!rows_layout(shape)) {
    const int64_t planes = shape.n * c, s = shape.s;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t pl = 0; pl < planes; ++pl) {
      const int64_t k = pl % c;
      VA<T> pv[4];
      for (int i = 0; i < 4; ++i) pv[i] = p[i] ? hn::Set(d, p[i][k]) : hn::Zero(d);
      const int64_t base = pl * s;
      int64_t j = 0;
      for (; j + N <= s; j += N) vec(base + j, pv);
      for (; j < s; ++j) one(base + j, k);
    }
  } else {
    const int64_t rows = shape.m();
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < rows; ++r) {
      VA<T> pv[4];
      int64_t k = 0;
      for (; k + N <= c; k += N) {
        for (int i = 0; i < 4; ++i) pv[i] = p[i] ? hn::LoadU(d, p[i] + k) : hn::Zero(d);
        vec(r * c + k, pv);
      }
      for (; k < c; ++k) one(r * c + k, k);
    }
  }
}

template <class T>
HWY_INLINE param_t<T> Param(const FusedArgs<T>& a, int i, int64_t k) {
  return a.p[i] ? a.p[i][k] : param_t<T>(0);
}

// Stores v at p, past the caches where stream (outputs too large for them:
// without it each output line is read before it is written, a tensor's
// worth of traffic more; stream_output also guarantees aligned vectors).
template <class D, class T>
HWY_INLINE void Put(bool stream, hn::Vec<D> v, D d, T* HWY_RESTRICT p) {
  if (stream) {
    StoreT<true>(v, d, p);
  } else {
    StoreT(v, d, p);
  }
}

template <int A, class T>
void FusedNormalizeA(const FusedArgs<T>& a) {
  using P = param_t<T>;
  const DA<T> d;
  const VA<T> vslope = hn::Set(d, a.slope);
  const T* x = a.x;
  const T* r = a.residual;
  T* y = a.y;
  const P slope = a.slope;
  // Not with a residual in a rows layout: streaming y there measured 0.84x
  // ((16,128,112,112) NHWC, one thread, 7 runs of the two builds taking
  // turns) where every other fused pass gained 1.07x to 1.27x; not
  // understood.
  const bool stream = stream_output(a.shape, y) && !(r && rows_layout(a.shape));
  if (r) {
    ForElements<T>(
        a,
        [&](int64_t e, const VA<T>* pv) {
          const auto z =
              hn::Add(hn::MulAdd(hn::Sub(LoadT(d, x + e), pv[0]), pv[1], pv[2]), LoadT(d, r + e));
          Put(stream, ActV<A>(d, z, vslope), d, y + e);
        },
        [&](int64_t e, int64_t k) {
          const P z =
              (Widen(x[e]) - Param(a, 0, k)) * Param(a, 1, k) + Param(a, 2, k) + Widen(r[e]);
          y[e] = T(ActS<A>(z, slope));
        });
  } else {
    ForElements<T>(
        a,
        [&](int64_t e, const VA<T>* pv) {
          const auto z = hn::MulAdd(hn::Sub(LoadT(d, x + e), pv[0]), pv[1], pv[2]);
          Put(stream, ActV<A>(d, z, vslope), d, y + e);
        },
        [&](int64_t e, int64_t k) {
          const P z = (Widen(x[e]) - Param(a, 0, k)) * Param(a, 1, k) + Param(a, 2, k);
          y[e] = T(ActS<A>(z, slope));
        });
  }
  if (stream) hwy::FlushStream();
}

template <class T>
void FusedNormalize(const FusedArgs<T>& a) {
  switch (a.act) {
    case Activation::identity:
      return FusedNormalizeA<kIdentity>(a);
    case Activation::relu:
      return FusedNormalizeA<kRelu>(a);
    case Activation::leaky_relu:
      return FusedNormalizeA<kLeaky>(a);
  }
}

// Loads dz and g - o at element e (vectors), or their scalar values.
template <int A, bool FromOutput, class T>
struct Backward {
  using P = param_t<T>;
  const FusedArgs<T>& a;
  DA<T> d;
  VA<T> vslope, vinv;
  P slope, inv;
  bool stream_dz;  // dz_out is written past the caches
  static constexpr bool reads_y = A != kIdentity || FromOutput;
  explicit Backward(const FusedArgs<T>& args)
      : a(args),
        vslope(hn::Set(d, args.slope)),
        vinv(hn::Set(d, args.slope != 0 ? P(1) / args.slope : P(0))),
        slope(args.slope),
        inv(args.slope != 0 ? P(1) / args.slope : P(0)),
        stream_dz(args.dz_out && stream_output(args.shape, args.dz_out)) {}

  HWY_INLINE VA<T> dz(int64_t e, VA<T>& yv) const {
    if constexpr (!FromOutput) {
      if (a.dz_in) return LoadT(d, a.dz_in + e);
    }
    VA<T> g;
    if constexpr (A == kIdentity && !FromOutput) {
      g = LoadT(d, a.dy + e);
    } else {
      yv = LoadT(d, a.y_in + e);
      g = MaskV<A>(d, LoadT(d, a.dy + e), yv, vslope);
    }
    if constexpr (!FromOutput) {
      if (a.dz_out) Put(stream_dz, g, d, a.dz_out + e);
    }
    return g;
  }
  HWY_INLINE VA<T> g(int64_t e, VA<T> yv) const {
    if constexpr (FromOutput) {
      return InvV<A>(d, yv, vinv);
    } else {
      return LoadT(d, a.x + e);
    }
  }
  HWY_INLINE P dz1(int64_t e, P& yv) const {
    if constexpr (!FromOutput) {
      if (a.dz_in) return Widen(a.dz_in[e]);
    }
    P g;
    if constexpr (A == kIdentity && !FromOutput) {
      g = Widen(a.dy[e]);
    } else {
      yv = Widen(a.y_in[e]);
      g = MaskS<A>(Widen(a.dy[e]), yv, slope);
    }
    if constexpr (!FromOutput) {
      if (a.dz_out) a.dz_out[e] = T(g);
    }
    return g;
  }
  HWY_INLINE P g1(int64_t e, P yv) const {
    if constexpr (FromOutput) {
      return InvS<A>(yv, inv);
    } else {
      return Widen(a.x[e]);
    }
  }
};

// sum dz and sum dz * (g - o) of channel k over samples [i0, i1), as
// NchwUnitDot does for plain batch norm.
template <int A, bool FromOutput, class T>
Pair FusedUnitDot(const Backward<A, FromOutput, T>& B, const Shape& shape, int64_t k, int64_t i0,
                  int64_t i1, param_t<T> o) {
  const DA<T> d;
  const VA<T> z = hn::Zero(d), vo = hn::Set(d, o);
  VA<T> s0 = z, s1 = z, q0 = z, q1 = z;
  double ts = 0, tq = 0;
  Pair total;
  ForPlanes<T>(
      shape, k, i0, i1,
      [&](int64_t j0, int64_t j1) {
        VA<T> y0 = z;
        const VA<T> g0 = B.dz(j0, y0);
        s0 = hn::Add(s0, g0);
        q0 = hn::MulAdd(g0, hn::Sub(B.g(j0, y0), vo), q0);
        if (j1 >= 0) {
          VA<T> y1 = z;
          const VA<T> g1 = B.dz(j1, y1);
          s1 = hn::Add(s1, g1);
          q1 = hn::MulAdd(g1, hn::Sub(B.g(j1, y1), vo), q1);
        }
      },
      [&](int64_t j) {
        param_t<T> yv = 0;
        const double g = double(B.dz1(j, yv));
        ts += g;
        tq += g * (double(B.g1(j, yv)) - double(o));
      },
      [&] {
        total.first += Total(d, s0, s1, z, z) + ts;
        total.second += Total(d, q0, q1, z, z) + tq;
        s0 = s1 = q0 = q1 = z;
        ts = tq = 0;
      });
  return total;
}

// Rows layouts: sum_dz[k] += sum dz and sum_dz_g[k] += sum dz * (g - o_k)
// over rows [r0, r1) for channels [k0, k0 + NV * N), flushed to double
// every kFlushRows rows.
template <int NV, int A, bool FromOutput, class T>
void FusedDotBlock(const Backward<A, FromOutput, T>& B, int64_t c, int64_t k0, int64_t r0,
                   int64_t r1, const param_t<T>* o, double* HWY_RESTRICT sum_dz,
                   double* HWY_RESTRICT sum_dz_g) {
  const DA<T> d;
  const int64_t N = int64_t(hn::Lanes(d));
  VA<T> vo[4], s[4], q[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    vo[v] = (v < NV && o) ? hn::LoadU(d, o + k0 + v * N) : hn::Zero(d);
    s[v] = hn::Zero(d);
    q[v] = hn::Zero(d);
  }
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    const int64_t re = std::min(r1, rb + kFlushRows);
    for (int64_t r = rb; r < re; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const int64_t e = r * c + k0 + v * N;
        VA<T> yv = hn::Zero(d);
        const VA<T> g = B.dz(e, yv);
        s[v] = hn::Add(s[v], g);
        q[v] = hn::MulAdd(g, hn::Sub(B.g(e, yv), vo[v]), q[v]);
      }
    }
    FlushBlock<NV>(d, s, sum_dz + k0);
    FlushBlock<NV>(d, q, sum_dz_g + k0);
  }
}

// The same for the channels [k_tail, c) past the last whole vector.
template <int A, bool FromOutput, class T>
void FusedDotTail(const Backward<A, FromOutput, T>& B, int64_t c, int64_t k_tail, int64_t r0,
                  int64_t r1, const param_t<T>* o, double* sum_dz, double* sum_dz_g) {
  for (int64_t k = k_tail; k < c; ++k) {
    const double ok = o ? double(o[k]) : 0.0;
    double ts = 0, tq = 0;
    for (int64_t r = r0; r < r1; ++r) {
      param_t<T> yv = 0;
      const double g = double(B.dz1(r * c + k, yv));
      ts += g;
      tq += g * (double(B.g1(r * c + k, yv)) - ok);
    }
    sum_dz[k] += ts;
    sum_dz_g[k] += tq;
  }
}

// Every channel over rows [r0, r1), into sum_dz[0, c) and sum_dz_g[0, c).
template <int A, bool FromOutput, class T>
void FusedRowsUnitDot(const Backward<A, FromOutput, T>& B, int64_t c, int64_t r0, int64_t r1,
                      const param_t<T>* o, double* sum_dz, double* sum_dz_g) {
  PrefetchRows(B.a.dy, c, r0, r1);
  if (B.reads_y) PrefetchRows(B.a.y_in, c, r0, r1);
  if (!FromOutput) PrefetchRows(B.a.x, c, r0, r1);
  std::fill(sum_dz, sum_dz + c, 0.0);
  std::fill(sum_dz_g, sum_dz_g + c, 0.0);
  const int64_t tail = ForBlocks<T>(
      c, [&]<int NV>(int64_t k0) { FusedDotBlock<NV>(B, c, k0, r0, r1, o, sum_dz, sum_dz_g); });
  FusedDotTail(B, c, tail, r0, r1, o, sum_dz, sum_dz_g);
}

template <int A, bool FromOutput, class T>
void FusedReduceA(const FusedArgs<T>& a) {
  using P = param_t<T>;
  const Backward<A, FromOutput, T> B(a);
  const DA<T> d;
  const int64_t N = int64_t(hn::Lanes(d));
  const Shape& shape = a.shape;
  const int64_t c = shape.c;
  const P* o = a.p[0];
  // Inputs each pass reads (dy, and y for the mask or from the output, and x).
  constexpr int64_t tensors = 1 + Backward<A, FromOutput, T>::reads_y + !FromOutput;
  const int nt = threads_for(shape, sizeof(T));
  if (!rows_layout(shape)) {
    // Units of plain batch norm's backward (fast_plan.hpp): a channel, or
    // for channels too large for the cache a group of its samples, so that
    // few channels with large planes still use every thread. The units are
    // fixed by the shape and merged in order: results do not depend on the
    // thread count.
    const NchwPlan plan = nchw_plan(shape, tensors, sizeof(T));
    const int64_t units = c * plan.groups;
    std::vector<Pair> part(static_cast<size_t>(units));
#pragma omp parallel for schedule(dynamic, channel_chunk(units, nt)) num_threads(nt)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t k = u / plan.groups, g = u % plan.groups;
      part[size_t(u)] = FusedUnitDot(B, shape, k, g * plan.group,
                                     std::min(shape.n, (g + 1) * plan.group), o ? o[k] : P(0));
    }
    for (int64_t k = 0; k < c; ++k) {
      Pair total;
      for (int64_t g = 0; g < plan.groups; ++g) {
        total.first += part[size_t(k * plan.groups + g)].first;
        total.second += part[size_t(k * plan.groups + g)].second;
      }
      a.sum_dz[k] = total.first;
      a.sum_dz_g[k] = total.second;
    }
    return;
  }
  // Rows layouts with few rows and enough channel blocks for the threads:
  // each block of channels walks all the rows, which stay in cache.
  // Otherwise units of rows fixed by the shape (as plain batch norm's
  // ReduceAll), each summing all channels of its rows, merged in unit order:
  // a walk down the columns of many rows strided the whole tensor, and for
  // 64 channels or fewer left one block for one thread (2 threads: 1.22x to
  // 1.26x faster on (32,64,56,56) and (8,32,128,128) NHWC; the column walk
  // stays 1.1x to 1.2x faster on (256,2048)). The two sum in other orders,
  // so the choice depends on the shape alone: at least two blocks, one for
  // each thread of the machines this was tuned on (it compared the blocks
  // with the thread count, and 1 and 2 threads gave other float64 bits on
  // (2,32,4096) NHWC; bnorm_hashes --threads 1 against --threads 2 found it).
  const int64_t column_blocks = (c / N + 3) / 4, rows = shape.m();
  if (column_units(shape, tensors) && column_blocks >= 2) {
    ForColumns<T>(
        shape,
        [&]<int NV>(int64_t k0) { FusedDotBlock<NV>(B, c, k0, 0, rows, o, a.sum_dz, a.sum_dz_g); },
        [&](int64_t k_tail) { FusedDotTail(B, c, k_tail, 0, rows, o, a.sum_dz, a.sum_dz_g); });
    return;
  }
  const int64_t per = rows_per_unit(c, sizeof(T)), units = (rows + per - 1) / per;
  double* part_s = scratch<double, 0>(units * c);
  double* part_q = scratch<double, 1>(units * c);
#pragma omp parallel for schedule(dynamic) num_threads(nt)
  for (int64_t u = 0; u < units; ++u)
    FusedRowsUnitDot(B, c, u * per, std::min(rows, (u + 1) * per), o, part_s + u * c,
                     part_q + u * c);
  const int64_t kb = 256, blocks = (c + kb - 1) / kb;
#pragma omp parallel for schedule(static) num_threads(units* c >= 16384 ? nt : 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t k0 = blk * kb, k1 = std::min(c, k0 + kb);
    for (int64_t u = 0; u < units; ++u)
      for (int64_t k = k0; k < k1; ++k) {
        a.sum_dz[k] += part_s[u * c + k];
        a.sum_dz_g[k] += part_q[u * c + k];
      }
  }
}

template <int A, bool FromOutput, class T>
void FusedDxA(const FusedArgs<T>& a) {
  using P = param_t<T>;
  const Backward<A, FromOutput, T> B(a);
  const DA<T> d;
  T* dx = a.dx;
  T* dr = a.dresidual;
  const bool stream_dx = dx && stream_output(a.shape, dx);
  const bool stream_dr = dr && stream_output(a.shape, dr);
  ForElements<T>(
      a,
      [&](int64_t e, const VA<T>* pv) {
        VA<T> yv = hn::Zero(d);
        const VA<T> g = B.dz(e, yv);
        if (dx)
          Put(stream_dx, hn::MulAdd(pv[1], g, hn::MulAdd(pv[2], hn::Sub(B.g(e, yv), pv[0]), pv[3])),
              d, dx + e);
        if (dr) Put(stream_dr, g, d, dr + e);
      },
      [&](int64_t e, int64_t k) {
        P yv = 0;
        const P g = B.dz1(e, yv);
        const P v = B.g1(e, yv) - Param(a, 0, k);
        if (dx) dx[e] = T(Param(a, 1, k) * g + (Param(a, 2, k) * v + Param(a, 3, k)));
        if (dr) dr[e] = T(g);
      });
  if (stream_dx || stream_dr) hwy::FlushStream();
}

// The backward passes for the activation and the source of g.
template <template <int, bool, class> class F, class T>
void ForMode(const FusedArgs<T>& a) {
  if (a.from_output) {
    if (a.act == Activation::leaky_relu) return F<kLeaky, true, T>::run(a);
    return F<kIdentity, true, T>::run(a);
  }
  switch (a.act) {
    case Activation::identity:
      return F<kIdentity, false, T>::run(a);
    case Activation::relu:
      return F<kRelu, false, T>::run(a);
    case Activation::leaky_relu:
      return F<kLeaky, false, T>::run(a);
  }
}
template <int A, bool FromOutput, class T>
struct ReduceRun {
  static void run(const FusedArgs<T>& a) { FusedReduceA<A, FromOutput, T>(a); }
};
template <int A, bool FromOutput, class T>
struct DxRun {
  static void run(const FusedArgs<T>& a) { FusedDxA<A, FromOutput, T>(a); }
};

#define BNORM_FUSED(T, S, name)                                           \
  void FusedNormalize##S(const FusedArgs<T>& a) { FusedNormalize<T>(a); } \
  void FusedReduce##S(const FusedArgs<T>& a) {                            \
    ForMode<ReduceRun, T>(a);                                             \
    if (a.dz_out) hwy::FlushStream();                                     \
  }                                                                       \
  void FusedDx##S(const FusedArgs<T>& a) { ForMode<DxRun, T>(a); }
BNORM_FOR_EACH_TYPE(BNORM_FUSED)
#undef BNORM_FUSED

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bnorm::cpu {

#define BNORM_EXPORT(T, S, name) \
  HWY_EXPORT(FusedNormalize##S); \
  HWY_EXPORT(FusedReduce##S);    \
  HWY_EXPORT(FusedDx##S);
BNORM_FOR_EACH_TYPE(BNORM_EXPORT)
#undef BNORM_EXPORT

template <class T>
void fused_normalize_fast(const FusedArgs<T>& args) {
  BNORM_DISPATCH(FusedNormalize, args);
}
template <class T>
void fused_reduce_fast(const FusedArgs<T>& args) {
  BNORM_DISPATCH(FusedReduce, args);
}
template <class T>
void fused_dx_fast(const FusedArgs<T>& args) {
  BNORM_DISPATCH(FusedDx, args);
}

#define BNORM_INSTANTIATE(T, S, name)                         \
  template void fused_normalize_fast<T>(const FusedArgs<T>&); \
  template void fused_reduce_fast<T>(const FusedArgs<T>&);    \
  template void fused_dx_fast<T>(const FusedArgs<T>&);
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm::cpu
#endif  // HWY_ONCE
