// Per-target helpers of the float32 fast path, included once per Highway
// target by each fast_*.cpp (the "-inl.h" pattern: the include guard toggles
// with HWY_TARGET_TOGGLE, so every pass of foreach_target sees it again).
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

#include "src/cpu/fast_plan.hpp"

HWY_BEFORE_NAMESPACE();
namespace bnorm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Contiguous elements summed in float lanes before the sum moves to double
// (at most 32 terms a lane with 16 lanes and 4 accumulators).
constexpr int64_t kBlock = 2048;

HWY_INLINE double Total(DF d, VF a0, VF a1, VF a2, VF a3) {
  return double(hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)))));
}

struct Pair {
  double first = 0, second = 0;
};

// AVX2 and AVX-512 load and store a partial vector without touching the
// lanes past the end (maskload/maskstore, masked moves); the other targets
// finish in scalar code.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
constexpr bool kMaskedTail = true;
#else
constexpr bool kMaskedTail = false;
#endif

// ---- NCHW (s > 1) ----

// Channel k's planes for samples [i0, i1), in order. The vector partial sums
// run across planes (a horizontal reduction per plane would cost more than
// a short plane's loads) and move to double every kBlock values.
template <class Body, class Tail, class Flush>
HWY_INLINE void ForPlanes(const Shape& shape, int64_t k, int64_t i0, int64_t i1, Body&& body,
                          Tail&& tail, Flush&& flush) {
  const int64_t c = shape.c, s = shape.s;
  const int64_t N = int64_t(hn::Lanes(DF()));
  int64_t pending = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t base = (i * c + k) * s;
    int64_t j = 0;
    for (; j + 2 * N <= s; j += 2 * N) body(base + j, base + j + N);
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
// with the partial sums in registers; every kFlushRows rows the float
// partials move to double totals.
template <int NV>
HWY_INLINE void FlushBlock(DF d, VF (&acc)[4], double* HWY_RESTRICT total) {
  const int64_t N = int64_t(hn::Lanes(d));
#if HWY_TARGET == HWY_SCALAR
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    total[v] += double(hn::GetLane(acc[v]));
    acc[v] = hn::Zero(d);
  }
  (void)N;
#else
  // Widen each half of the float vector to a double vector and add.
  const hn::Half<DF> dh;
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

// total[k0 + i] += sum over rows of x[r, k0 + i].
template <int NV>
void SumBlock(const float* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t r0, int64_t r1,
              double* HWY_RESTRICT total) {
  const DF d;
  const int64_t N = int64_t(hn::Lanes(d));
  VF acc[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) acc[v] = hn::Zero(d);
  for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
    const int64_t re = std::min(r1, rb + kFlushRows);
    for (int64_t r = rb; r < re; ++r) {
      const float* HWY_RESTRICT row = x + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v] = hn::Add(acc[v], hn::LoadU(d, row + v * N));
    }
    FlushBlock<NV>(d, acc, total + k0);
  }
}

// dev[k] += sum (x - mu_k), sq[k] += sum (x - mu_k)^2 for the block's channels.
template <int NV>
void CenteredBlock(const float* HWY_RESTRICT x, int64_t c, int64_t k0, int64_t r0, int64_t r1,
                   const float* HWY_RESTRICT mu, double* HWY_RESTRICT dev,
                   double* HWY_RESTRICT sq) {
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
      const float* HWY_RESTRICT row = x + r * c + k0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const VF e = hn::Sub(hn::LoadU(d, row + v * N), vmu[v]);
        s[v] = hn::Add(s[v], e);
        q[v] = hn::MulAdd(e, e, q[v]);
      }
    }
    FlushBlock<NV>(d, s, dev + k0);
    FlushBlock<NV>(d, q, sq + k0);
  }
}

// Runs f.template operator()<NV>(k0) over channel blocks of up to 4 vectors
// and returns where the scalar tail starts.
template <class F>
HWY_INLINE int64_t ForBlocks(int64_t c, F&& f) {
  const int64_t N = int64_t(hn::Lanes(DF()));
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
HWY_INLINE void PrefetchRows(const float* x, int64_t c, int64_t r0, int64_t r1) {
  if (c <= 4 * int64_t(hn::Lanes(DF()))) return;
  const char* p = reinterpret_cast<const char*>(x + r0 * c);
  const char* end = reinterpret_cast<const char*>(x + r1 * c);
  for (; p < end; p += 64) hwy::Prefetch(p);
}

// Runs the column kernels over blocks of up to 4 vectors of channels, in
// parallel, then the scalar tail.
template <class Block, class Tail>
void ForColumns(const Shape& shape, Block&& block, Tail&& tail) {
  const int64_t c = shape.c;
  const int64_t N = int64_t(hn::Lanes(DF())), W = 4 * N;
  const int64_t full = c / N * N, blocks = (full + W - 1) / W;
  const int nt = threads_for(shape);
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

// ---- defined in one fast_*.cpp, called from others (same target) ----

// Moments of channel k over samples [i0, i1) (fast_statistics.cpp).
Moments NchwUnitMoments(const Shape& shape, const float* HWY_RESTRICT x, int64_t k, int64_t i0,
                        int64_t i1);
// Per-channel mean and biased variance, any layout (fast_statistics.cpp).
void StatsAll(const Shape& shape, const float* x, double* mean, double* var);
// y = (x - mu) * scale + shift over [0, len) (fast_normalize.cpp).
void NormalizeSpan(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t len, float mu,
                   float scale, float shift, bool stream);
// y = (x - mu_k) * scale_k + shift_k, any layout (fast_normalize.cpp).
void NormalizeAll(const Shape& shape, const float* x, const float* mu, const float* scale,
                  const float* shift, float* y);

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#endif  // BNORM_CPU_FAST_COMMON_INL_H_
