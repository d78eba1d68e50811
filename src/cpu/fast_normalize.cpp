// y = (x - mu_k) * scale_k + shift_k for every element type: inference, and the
// normalize pass of the training forward where a channel does not fit one
// unit. One read of x, one write of y; outputs too large to stay in cache go
// out with non-temporal stores, which skip the read-for-ownership.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/fast_normalize.cpp"
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

// y = (x - mu) * scale + shift over [0, len). stream: y is vector-aligned
// (stream_output checked it).
template <class T>
void NormalizeSpan(const T* HWY_RESTRICT x, T* HWY_RESTRICT y, int64_t len, param_t<T> mu,
                   param_t<T> scale, param_t<T> shift, bool stream) {
  const DA<T> d;
  const int64_t N = int64_t(hn::Lanes(d));
  const VA<T> vmu = hn::Set(d, mu), va = hn::Set(d, scale), vb = hn::Set(d, shift);
  int64_t j = 0;
  if (stream) {
    for (; j + N <= len; j += N)
      StoreT<true>(hn::MulAdd(hn::Sub(LoadT(d, x + j), vmu), va, vb), d, y + j);
  } else {
    for (; j + N <= len; j += N)
      StoreT(hn::MulAdd(hn::Sub(LoadT(d, x + j), vmu), va, vb), d, y + j);
  }
  if (j == len) return;
  if constexpr (kMaskedTail<T>) {
    const auto m = hn::FirstN(d, size_t(len - j));
    hn::BlendedStore(hn::MulAdd(hn::Sub(hn::MaskedLoad(m, d, x + j), vmu), va, vb), m, d, y + j);
  } else {
    for (; j < len; ++j) y[j] = T((Widen(x[j]) - mu) * scale + shift);
  }
}

// Rows of whole vectors, at most four: parameters fit in registers.
template <class T>
HWY_INLINE bool narrow_rows(int64_t c) {
  const int64_t N = LanesOf<T>();
  return c % N == 0 && c <= 4 * N;
}

// Rows [r0, r1) of a rows layout. Everything the loops need arrives as a
// value: read through the OpenMP region's shared variables, the row length
// and the parameter pointers were reloaded for every vector (the stores may
// alias them, as far as the compiler knows). Stream: y's rows are aligned
// whole vectors (stream_output).
template <bool Stream, class T>
HWY_NOINLINE void NormalizeRows(const T* HWY_RESTRICT x, T* HWY_RESTRICT y, int64_t c, int64_t r0,
                                int64_t r1, const param_t<T>* HWY_RESTRICT mu,
                                const param_t<T>* HWY_RESTRICT scale,
                                const param_t<T>* HWY_RESTRICT shift) {
  const DA<T> d;
  const int64_t N = int64_t(hn::Lanes(d));
  const auto store = [&](VA<T> v, T* p) { StoreT<Stream>(v, d, p); };
  if (narrow_rows<T>(c)) {
    // Narrow rows: the parameters stay in registers.
    ForBlocks<T>(c, [&]<int NV>(int64_t) {
      VA<T> vmu[4], va[4], vb[4];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const int64_t k = v < NV ? v * N : 0;
        vmu[v] = hn::LoadU(d, mu + k);
        va[v] = hn::LoadU(d, scale + k);
        vb[v] = hn::LoadU(d, shift + k);
      }
      for (int64_t r = r0; r < r1; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          store(hn::MulAdd(hn::Sub(LoadT(d, x + r * c + v * N), vmu[v]), va[v], vb[v]),
                y + r * c + v * N);
    });
    return;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const T* HWY_RESTRICT xr = x + r * c;
    T* HWY_RESTRICT yr = y + r * c;
    int64_t k = 0;
    for (; k + N <= c; k += N)
      store(hn::MulAdd(hn::Sub(LoadT(d, xr + k), hn::LoadU(d, mu + k)), hn::LoadU(d, scale + k),
                       hn::LoadU(d, shift + k)),
            yr + k);
    for (; k < c; ++k) yr[k] = T((Widen(xr[k]) - mu[k]) * scale[k] + shift[k]);
  }
}

template <class T>
void NormalizeAll(const Shape& shape, const T* x, const param_t<T>* mu, const param_t<T>* scale,
                  const param_t<T>* shift, T* y) {
  using P = param_t<T>;
  const int nt = threads_for(shape, sizeof(T));
  const bool stream = stream_output(shape, y);
  const int64_t c = shape.c;
  if (!rows_layout(shape)) {
    const int64_t planes = shape.n * c, s = shape.s;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t k = p % c;
      NormalizeSpan(x + p * s, y + p * s, s, mu[k], scale[k], shift[k], stream);
    }
  } else if (stream && !narrow_rows<T>(c)) {
    // Wide rows streamed out: the plain loop below, whose parameter
    // pointers are reloaded per vector, measured faster here than
    // NormalizeRows (one thread, (16,128,112,112): 4.5-4.9 ms against
    // 5.3-5.8 ms; the NT stores seem to prefer a slower issue rate).
    const DA<T> d;
    const int64_t N = int64_t(hn::Lanes(d)), rows = shape.m();
    const P* HWY_RESTRICT pm = mu;
    const P* HWY_RESTRICT ps = scale;
    const P* HWY_RESTRICT pb = shift;
#pragma omp parallel for schedule(static) num_threads(nt) firstprivate(pm, ps, pb)
    for (int64_t r = 0; r < rows; ++r) {
      const T* HWY_RESTRICT xr = x + r * c;
      T* HWY_RESTRICT yr = y + r * c;
      int64_t k = 0;
      for (; k + N <= c; k += N)
        StoreT<true>(hn::MulAdd(hn::Sub(LoadT(d, xr + k), hn::LoadU(d, pm + k)),
                                hn::LoadU(d, ps + k), hn::LoadU(d, pb + k)),
                     d, yr + k);
      for (; k < c; ++k) yr[k] = T((Widen(xr[k]) - pm[k]) * ps[k] + pb[k]);
    }
  } else {
    const int64_t rows = shape.m(), chunk = 64, chunks = (rows + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < chunks; ++i) {
      const int64_t r0 = i * chunk, r1 = std::min(rows, r0 + chunk);
      if (stream) {
        NormalizeRows<true, T>(x, y, c, r0, r1, mu, scale, shift);
      } else {
        NormalizeRows<false, T>(x, y, c, r0, r1, mu, scale, shift);
      }
    }
  }
  if (stream) hwy::FlushStream();
}

#define BNORM_NORMALIZE(T, S, name)                                                           \
  template void NormalizeSpan<T>(const T* HWY_RESTRICT, T* HWY_RESTRICT, int64_t, param_t<T>, \
                                 param_t<T>, param_t<T>, bool);                               \
  template void NormalizeAll<T>(const Shape&, const T*, const param_t<T>*, const param_t<T>*, \
                                const param_t<T>*, T*);                                       \
  void NormalizeAll##S(const Shape& shape, const T* x, const param_t<T>* mu,                  \
                       const param_t<T>* scale, const param_t<T>* shift, T* y) {              \
    NormalizeAll<T>(shape, x, mu, scale, shift, y);                                           \
  }
BNORM_FOR_EACH_TYPE(BNORM_NORMALIZE)
#undef BNORM_NORMALIZE

}  // namespace HWY_NAMESPACE
}  // namespace bnorm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bnorm::cpu {

#define BNORM_EXPORT(T, S, name) HWY_EXPORT(NormalizeAll##S);
BNORM_FOR_EACH_TYPE(BNORM_EXPORT)
#undef BNORM_EXPORT

template <class T>
void normalize_fast(const Shape& shape, const T* x, const param_t<T>* mu, const param_t<T>* scale,
                    const param_t<T>* shift, T* y) {
  BNORM_DISPATCH(NormalizeAll, shape, x, mu, scale, shift, y);
}

#define BNORM_INSTANTIATE(T, S, name)                                                           \
  template void normalize_fast<T>(const Shape&, const T*, const param_t<T>*, const param_t<T>*, \
                                  const param_t<T>*, T*);
BNORM_FOR_EACH_TYPE(BNORM_INSTANTIATE)
#undef BNORM_INSTANTIATE

}  // namespace bnorm::cpu
#endif  // HWY_ONCE
