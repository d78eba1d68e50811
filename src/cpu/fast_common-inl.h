// Per-target helpers of the fast path, included once per Highway target by
// each fast_*.cpp (the "-inl.h" pattern: the include guard toggles with
// HWY_TARGET_TOGGLE, so every pass of foreach_target sees it again).
//
// Element types. Every kernel is a template on the element type T and
// computes in vectors of P = param_t<T> (float, or double for double):
// LoadT reads a vector's worth of T and converts it to P, StoreT converts
// back and writes. bfloat16 widens by a shift and narrows by round to
// nearest even on the integer bits (Highway 1.0's DemoteTo truncates);
// float16 uses F16C where the target has it (AVX2 and up: vcvtph2ps, and
// vcvtps2ph in the default round-to-nearest-even mode) and exact integer
// code elsewhere.
//
// Numerics. Values are summed in float vector lanes for at most a few dozen
// terms, then carried in double; partial results of units are merged in
// double in unit order (Chan's formula for mean and M2), so results do not
// depend on the thread count.

// clang-format off
#if defined(BNORM_CPU_FAST_COMMON_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef BNORM_CPU_FAST_COMMON_INL_H_
#undef BNORM_CPU_FAST_COMMON_INL_H_
#else
#define BNORM_CPU_FAST_COMMON_INL_H_
#endif
// clang-format on

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <cmath>
#include <type_traits>

#include "src/cpu/fast_plan.hpp"

HWY_BEFORE_NAMESPACE();
namespace bnorm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
// The compute vectors of element type T.
template <class T>
using DA = hn::ScalableTag<param_t<T>>;
template <class T>
using VA = hn::Vec<DA<T>>;
template <class T>
constexpr bool kNarrow = sizeof(T) == 2;
// Lanes of T's compute vectors.
template <class T>
HWY_INLINE int64_t LanesOf() {
  return int64_t(hn::Lanes(DA<T>()));
}

// ---- conversions ----

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
constexpr bool kF16C = true;
#else
constexpr bool kF16C = false;
#endif

// float lanes from their float16 bits (exact).
template <class D, class V16>
HWY_INLINE hn::Vec<D> WidenF16(D d, V16 raw) {
  if constexpr (kF16C) {
    return hn::PromoteTo(d, hn::BitCast(hn::Rebind<hwy::float16_t, D>(), raw));
  } else {
    const hn::RebindToUnsigned<D> du;
    const hn::RebindToSigned<D> di;
    const auto h = hn::PromoteTo(du, raw);
    const auto sign = hn::ShiftLeft<16>(hn::And(h, hn::Set(du, 0x8000u)));
    const auto e = hn::And(hn::ShiftRight<10>(h), hn::Set(du, 0x1fu));
    const auto m = hn::And(h, hn::Set(du, 0x3ffu));
    const auto normal =
        hn::Or(hn::ShiftLeft<23>(hn::Add(e, hn::Set(du, 112u))), hn::ShiftLeft<13>(m));
    const auto special = hn::Or(hn::Set(du, 0x7f800000u), hn::ShiftLeft<13>(m));
    // Subnormals (and zero): m * 2^-24, exact in float.
    const auto sub =
        hn::BitCast(du, hn::Mul(hn::ConvertTo(d, hn::BitCast(di, m)), hn::Set(d, 0x1p-24f)));
    const auto bits =
        hn::IfThenElse(hn::Eq(e, hn::Zero(du)), sub,
                       hn::IfThenElse(hn::Eq(e, hn::Set(du, 0x1fu)), special, normal));
    return hn::BitCast(d, hn::Or(sign, bits));
  }
}

// bfloat16 bits of float lanes, rounded to nearest even; NaN stays NaN.
template <class D>
HWY_INLINE hn::Vec<hn::Rebind<uint16_t, D>> NarrowBF16(D /*d*/, hn::Vec<D> v) {
  const hn::RebindToUnsigned<D> du;
  const hn::RebindToSigned<D> di;
  const auto u = hn::BitCast(du, v);
  const auto lsb = hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u));
  const auto rounded = hn::Add(u, hn::Add(hn::Set(du, 0x7fffu), lsb));
  const auto quiet = hn::Or(u, hn::Set(du, 0x400000u));
  const auto bits = hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), quiet, rounded);
  // The top halves, 0..65535, narrow exactly through the saturating demote.
  return hn::DemoteTo(hn::Rebind<uint16_t, D>(), hn::BitCast(di, hn::ShiftRight<16>(bits)));
}

// float16 bits of float lanes, rounded to nearest even.
template <class D>
HWY_INLINE hn::Vec<hn::Rebind<uint16_t, D>> NarrowF16(D d, hn::Vec<D> v) {
  const hn::Rebind<uint16_t, D> d16;
  if constexpr (kF16C) {
    return hn::BitCast(d16, hn::DemoteTo(hn::Rebind<hwy::float16_t, D>(), v));
  } else {
    // Targets without F16C: lane by lane, exact (dtypes.hpp).
    constexpr size_t kMax = hn::MaxLanes(D());
    HWY_ALIGN float lanes[kMax];
    HWY_ALIGN uint16_t out[kMax];
    hn::Store(v, d, lanes);
    for (size_t i = 0; i < hn::Lanes(d); ++i) out[i] = detail::float16_bits(lanes[i]);
    return hn::Load(d16, out);
  }
}

// A vector of P from Lanes(d) consecutive T.
template <class T, class D>
HWY_INLINE hn::Vec<D> LoadT(D d, const T* HWY_RESTRICT p) {
  if constexpr (!kNarrow<T>) {
    return hn::LoadU(d, p);
  } else {
    const auto raw = hn::LoadU(hn::Rebind<uint16_t, D>(), reinterpret_cast<const uint16_t*>(p));
    if constexpr (std::is_same_v<T, bfloat16>) {
      return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(hn::RebindToUnsigned<D>(), raw)));
    } else {
      return WidenF16(d, raw);
    }
  }
}

// Rounds v to T and writes Lanes(d) consecutive T; Stream: p is aligned to
// the stored vector and the store bypasses the caches (only where the
// narrow vector is a whole register: a partial one would write past it).
template <bool Stream = false, class T, class D>
HWY_INLINE void StoreT(hn::Vec<D> v, D d, T* HWY_RESTRICT p) {
  if constexpr (!kNarrow<T>) {
    if constexpr (Stream) {
      hn::Stream(v, d, p);
    } else {
      hn::StoreU(v, d, p);
    }
  } else {
    const hn::Rebind<uint16_t, D> d16;
    uint16_t* HWY_RESTRICT q = reinterpret_cast<uint16_t*>(p);
    hn::Vec<decltype(d16)> bits;
    if constexpr (std::is_same_v<T, bfloat16>) {
      bits = NarrowBF16(d, v);
    } else {
      bits = NarrowF16(d, v);
    }
    if constexpr (Stream && HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2) {
      hn::Stream(bits, d16, q);
    } else {
      hn::StoreU(bits, d16, q);
    }
  }
}

// Scalar tails: T to P and back, the same roundings as the vectors.
template <class T>
HWY_INLINE param_t<T> Widen(T v) {
  return param_t<T>(v);
}

// ---- range fallbacks of the statistics ----
//
// The moments are summed in P's lanes. At the top of float's range, values
// more than about 1e19 from the unit's pilot mean overflow float's squares
// (and values near FLT_MAX its sums), although double would hold every
// result. At the bottom, deviations below about 1e-19 square into float's
// subnormals and lose their bits (a variance of 1e-45 comes out 10% off),
// which matters where eps is as small. Such a unit is summed again with
// every value scaled on load by a power of two, and the moments scaled
// back in double:
//  - kScale = -1, a non-finite mean or M2: by 2^-kShiftDown. Only values
//    that become subnormal (below 2^-54 in float) lose bits, and a unit
//    that overflowed has deviations beyond 2^60, far above those bits.
//    Scaled, |x| <= 2^56 and a lane's few dozen squares stay finite.
//  - kScale = +1, var < kTinyVar: by 2^kShiftUp, kept if finite (values
//    beyond 2^64 overflow then; their unit keeps the first result). Not for
//    a channel of zeros; a channel of values below 2^-75 summing to exactly
//    0 is taken for one (its variance, below 1e-45, matters only where eps
//    is smaller still).
// The ordinary path pays one test per unit. For double the same holds at
// double's ends, up to M2 itself leaving double's range.
template <class P>
constexpr int kShiftDown = std::is_same_v<P, double> ? 540 : 72;
template <class P>
constexpr int kShiftUp = std::is_same_v<P, double> ? 512 : 64;
template <class P>
inline const double kTinyVar = std::is_same_v<P, double> ? 0x1p-960 : 0x1p-100;
template <int kScale, class P>
constexpr int kShift = kScale<0 ? -kShiftDown<P> : kScale> 0 ? kShiftUp<P> : 0;

// x * 2^kShift<kScale>.
template <int kScale, class T, class D>
HWY_INLINE hn::Vec<D> LoadScaled(D d, const T* HWY_RESTRICT p) {
  if constexpr (kScale != 0) {
    using P = hn::TFromD<D>;
    return hn::Mul(LoadT(d, p), hn::Set(d, P(std::ldexp(P(1), kShift<kScale, P>))));
  } else {
    return LoadT(d, p);
  }
}
template <int kScale, class T>
HWY_INLINE param_t<T> WidenScaled(T v) {
  using P = param_t<T>;
  if constexpr (kScale != 0) {
    return P(v) * P(std::ldexp(P(1), kShift<kScale, P>));
  } else {
    return P(v);
  }
}
// Moments of scaled values back to the values' own.
template <int kScale, class P>
HWY_INLINE Moments Unscale(Moments mo) {
  return {mo.count, std::ldexp(mo.mean, -kShift<kScale, P>),
          std::ldexp(mo.m2, -2 * kShift<kScale, P>)};
}
HWY_INLINE bool Finite(const Moments& mo) { return std::isfinite(mo.mean) && std::isfinite(mo.m2); }
// Which pass a unit's first moments call for: 0 none, -1 or +1 (above).
template <class P>
HWY_INLINE int RescaleOf(const Moments& mo) {
  if (!Finite(mo)) return -1;
  // M2 <= 0 is where every square underflowed (or cancelled); all zeros (a
  // dead ReLU's channel) is left alone, a constant channel summed again.
  return mo.m2 < kTinyVar<P> * mo.count && (mo.m2 != 0 || mo.mean != 0) ? 1 : 0;
}
// The moments to keep: the scaled pass's (unscaled) if it is finite.
template <int kScale, class P>
HWY_INLINE Moments Rescued(const Moments& first, const Moments& scaled) {
  const Moments mo = Unscale<kScale, P>(scaled);
  return kScale < 0 || Finite(mo) ? mo : first;
}

// Contiguous elements summed in float lanes before the sum moves to double
// (at most 32 terms a lane with 16 lanes and 4 accumulators).
constexpr int64_t kBlock = 2048;
// Values of one plane between flushes of the float partials (ForPlanes).
constexpr int64_t kPlaneFlush = int64_t(1) << 14;

template <class D, class V>
HWY_INLINE double Total(D d, V a0, V a1, V a2, V a3) {
  return double(hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)))));
}

struct Pair {
  double first = 0, second = 0;
};

// AVX2 and AVX-512 load and store a partial vector without touching the
// lanes past the end (maskload/maskstore, masked moves) for 4- and 8-byte
// elements; the other targets and the 16-bit types finish in scalar code.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
constexpr bool kMaskedTailTarget = true;
#else
constexpr bool kMaskedTailTarget = false;
#endif
template <class T>
constexpr bool kMaskedTail = kMaskedTailTarget && !kNarrow<T>;

// ---- NCHW (s > 1) ----

// Channel k's planes for samples [i0, i1), in order. The vector partial sums
// run across planes (a horizontal reduction per plane would cost more than
// a short plane's loads) and move to double every kBlock values.
template <class T, class Body, class Tail, class Flush>
HWY_INLINE void ForPlanes(const Shape& shape, int64_t k, int64_t i0, int64_t i1, Body&& body,
                          Tail&& tail, Flush&& flush) {
  const int64_t c = shape.c, s = shape.s;
  const int64_t N = LanesOf<T>();
  int64_t pending = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t base = (i * c + k) * s;
    int64_t j = 0;
    // A long plane also flushes within itself: a float partial that took
    // s / (2N) terms (hundreds of millions for a channel past 2^31 values)
    // would stop growing once each term is below its rounding step. Planes
    // shorter than kPlaneFlush are summed exactly as before.
    for (int64_t since = 0; j + 2 * N <= s; j += 2 * N) {
      body(base + j, base + j + N);
      if ((since += 2 * N) >= kPlaneFlush) {
        flush();
        since = 0;
      }
    }
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

// ---- rows (NHWC and 2-D) ----

// Row kernels work on a block of NV vectors of channels [k0, k0 + NV * N)
// with the partial sums in registers; every kFlushRows rows the partials
// move to double totals (float partials widened, double ones added).
template <int NV, class D>
HWY_INLINE void FlushBlock(D d, hn::Vec<D> (&acc)[4], double* HWY_RESTRICT total) {
  const int64_t N = int64_t(hn::Lanes(d));
  if constexpr (std::is_same_v<hn::TFromD<D>, double>) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      double* HWY_RESTRICT t = total + v * N;
      hn::StoreU(hn::Add(hn::LoadU(d, t), acc[v]), d, t);
      acc[v] = hn::Zero(d);
    }
  } else {
#if HWY_TARGET == HWY_SCALAR
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      total[v] += double(hn::GetLane(acc[v]));
      acc[v] = hn::Zero(d);
    }
    (void)N;
#else
    // Widen each half of the float vector to a double vector and add.
    const hn::Half<D> dh;
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
}

// total[k0 + i] += sum over rows of x[r, k0 + i] (scaled by kScale).
template <int NV, int kScale = 0, class T>
void SumBlock(const T* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t r0, int64_t r1,
              double* HWY_RESTRICT total) {
  const DA<T> d;
  const int64_t N = int64_t(hn::Lanes(d));
  VA<T> acc[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) acc[v] = hn::Zero(d);
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    const int64_t re = std::min(r1, rb + kFlushRows);
    for (int64_t r = rb; r < re; ++r) {
      const T* HWY_RESTRICT row = x + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v] = hn::Add(acc[v], LoadScaled<kScale>(d, row + v * N));
    }
    FlushBlock<NV>(d, acc, total + k0);
  }
}

// dev[k] += sum (x - mu_k), sq[k] += sum (x - mu_k)^2 for the block's
// channels (x scaled by kScale; mu then is too).
template <int NV, int kScale = 0, class T>
void CenteredBlock(const T* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t r0, int64_t r1,
                   const param_t<T>* HWY_RESTRICT mu, double* HWY_RESTRICT dev,
                   double* HWY_RESTRICT sq) {
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
      const T* HWY_RESTRICT row = x + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const auto e = hn::Sub(LoadScaled<kScale>(d, row + v * N), vmu[v]);
        s[v] = hn::Add(s[v], e);
        q[v] = hn::MulAdd(e, e, q[v]);
      }
    }
    FlushBlock<NV>(d, s, dev + k0);
    FlushBlock<NV>(d, q, sq + k0);
  }
}

// Runs f.template operator()<NV>(k0) over channel blocks of up to 4 vectors
// of T's compute lanes and returns where the scalar tail starts.
template <class T, class F>
HWY_INLINE int64_t ForBlocks(int64_t c, F&& f) {
  const int64_t N = LanesOf<T>();
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

// Wide rows: the block walks visit many rows at once, which the hardware
// prefetchers follow poorly; a sequential sweep of prefetches first brings
// the unit in at streaming speed.
template <class T>
HWY_INLINE void PrefetchRows(const T* x, int64_t c, int64_t r0, int64_t r1) {
  if (c <= 4 * LanesOf<T>()) return;
  const char* p = reinterpret_cast<const char*>(x + r0 * c);
  const char* end = reinterpret_cast<const char*>(x + r1 * c);
  for (; p < end; p += 64) hwy::Prefetch(p);
}

// Runs the column kernels over blocks of up to 4 vectors of channels, in
// parallel, then the scalar tail.
template <class T, class Block, class Tail>
void ForColumns(const Shape& shape, Block&& block, Tail&& tail) {
  const int64_t c = shape.c;
  const int64_t N = LanesOf<T>(), W = 4 * N;
  const int64_t full = c / N * N, blocks = (full + W - 1) / W;
  const int nt = threads_for(shape, sizeof(T));
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

// ---- defined in one fast_*.cpp for every T, called from others (same target) ----

// Moments of channel k over samples [i0, i1) (fast_statistics.cpp).
template <class T>
Moments NchwUnitMoments(const Shape& shape, const T* HWY_RESTRICT x, int64_t k, int64_t i0,
                        int64_t i1);
// Per-channel mean and biased variance, any layout (fast_statistics.cpp).
template <class T>
void StatsAll(const Shape& shape, const T* x, double* mean, double* var);
// y = (x - mu) * scale + shift over [0, len) (fast_normalize.cpp).
template <class T>
void NormalizeSpan(const T* HWY_RESTRICT x, T* HWY_RESTRICT y, int64_t len, param_t<T> mu,
                   param_t<T> scale, param_t<T> shift, bool stream);
// y = (x - mu_k) * scale_k + shift_k, any layout (fast_normalize.cpp).
template <class T>
void NormalizeAll(const Shape& shape, const T* x, const param_t<T>* mu, const param_t<T>* scale,
                  const param_t<T>* shift, T* y);

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#endif  // BNORM_CPU_FAST_COMMON_INL_H_
