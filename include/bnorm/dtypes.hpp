// The 16-bit storage types bnorm computes with, and the parameter type of
// each element type.
//
// bfloat16: 1 sign, 8 exponent, 7 fraction bits (the top half of a float:
// float's range, 2^-8 relative precision). float16: IEEE 754 binary16, 1
// sign, 5 exponent, 10 fraction bits (largest finite 65504, subnormals below
// 2^-14, 2^-11 relative precision). Both convert from float by rounding to
// nearest, ties to even (overflow gives Inf, a NaN stays a NaN, made quiet),
// and to float exactly.
//
// The kernels store x, y, dy and dx as T and compute in param_t<T> (float
// for the 16-bit types), rounding once to T on the way out; weights, biases
// and statistics are param_t<T>, as in PyTorch's and oneDNN's mixed-precision
// batch norm.
#pragma once

#include <bit>
#include <cstdint>
#include <type_traits>

namespace bnorm {

namespace detail {

inline uint16_t bfloat16_bits(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  // NaN: keep sign and top payload bits, set the quiet bit (rounding could
  // otherwise carry a NaN into Inf).
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
  // Round to nearest even on the 16 dropped bits; a carry into the exponent
  // is the right answer (up to Inf past the largest finite).
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float bfloat16_to_float(uint16_t bits) { return std::bit_cast<float>(uint32_t(bits) << 16); }

inline uint16_t float16_bits(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u)  // Inf, or NaN made quiet with its top payload bits
    return uint16_t(sign | 0x7c00u | (a > 0x7f800000u ? 0x0200u | ((a >> 13) & 0x3ffu) : 0u));
  // 65520 = 65504 + half an ulp and above round to Inf (65504's last bit is
  // odd, so the tie goes up too).
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
  if (a < 0x38800000u) {
    // Below 2^-14: a subnormal q * 2^-24, q = a's significand >> (126 - e),
    // rounded to nearest even.
    const uint32_t e = a >> 23;
    const uint32_t shift = 126 - e;
    if (shift > 24) return uint16_t(sign);
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return uint16_t(sign | q);  // q = 1024 is the smallest normal, encoded right
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits.
  const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
  return uint16_t(sign | ((r - (112u << 23)) >> 13));
}

inline float float16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    const float v = float(m) * 0x1p-24f;  // exact: m < 2^10
    return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(v));
  }
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}

}  // namespace detail

// bfloat16: trivially copyable, 2 bytes, bits as above.
struct bfloat16 {
  uint16_t bits;

  bfloat16() = default;
  explicit bfloat16(float f) : bits(detail::bfloat16_bits(f)) {}
  explicit operator float() const { return detail::bfloat16_to_float(bits); }
  static bfloat16 from_bits(uint16_t b) {
    bfloat16 v;
    v.bits = b;
    return v;
  }
  friend bool operator==(bfloat16 a, bfloat16 b) { return a.bits == b.bits; }
};

// float16 (IEEE binary16): trivially copyable, 2 bytes.
struct float16 {
  uint16_t bits;

  float16() = default;
  explicit float16(float f) : bits(detail::float16_bits(f)) {}
  explicit operator float() const { return detail::float16_to_float(bits); }
  static float16 from_bits(uint16_t b) {
    float16 v;
    v.bits = b;
    return v;
  }
  friend bool operator==(float16 a, float16 b) { return a.bits == b.bits; }
};

static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16>);
static_assert(sizeof(float16) == 2 && std::is_trivially_copyable_v<float16>);

// The type of weights, biases and statistics for element type T: float for
// float, bfloat16 and float16; double for double. Also the type the kernels
// compute in.
template <class T>
struct param_type;
template <>
struct param_type<float> {
  using type = float;
};
template <>
struct param_type<double> {
  using type = double;
};
template <>
struct param_type<bfloat16> {
  using type = float;
};
template <>
struct param_type<float16> {
  using type = float;
};
template <class T>
using param_t = typename param_type<T>::type;

// Every element type bnorm computes with, once: X(T, Suffix, name) for the
// type, a suffix for the per-type names of Highway's dispatch tables (which
// take plain function names, not templates), and the name users see. Every
// explicit instantiation, every run-time dtype dispatch (DType below: the
// NumPy module, the torch operators, MPI) and every typed test comes from
// this list. A new type is one line here, its param_type above, and its
// kernels' conversions (src/cpu/fast_common-inl.h).
#define BNORM_FOR_EACH_TYPE(X)         \
  X(float, F32, float32)               \
  X(double, F64, float64)              \
  X(::bnorm::bfloat16, BF16, bfloat16) \
  X(::bnorm::float16, F16, float16)

// The element type of a tensor known at run time.
#define BNORM_DTYPE_ENUMERATOR(T, S, name) name,
enum class DType { BNORM_FOR_EACH_TYPE(BNORM_DTYPE_ENUMERATOR) };
#undef BNORM_DTYPE_ENUMERATOR

#define BNORM_DTYPE_COUNT(T, S, name) +1
inline constexpr int kDTypeCount = 0 BNORM_FOR_EACH_TYPE(BNORM_DTYPE_COUNT);
#undef BNORM_DTYPE_COUNT

template <class T>
struct dtype_of;
#define BNORM_DTYPE_OF(T, S, dtype_name)              \
  template <>                                         \
  struct dtype_of<T> {                                \
    static constexpr DType value = DType::dtype_name; \
    static constexpr const char* name = #dtype_name;  \
  };
BNORM_FOR_EACH_TYPE(BNORM_DTYPE_OF)
#undef BNORM_DTYPE_OF

// f.template operator()<T>() for the element type T of dtype; the bindings
// write f as [&]<class T>() { ... }.
template <class F>
decltype(auto) visit_dtype(DType dtype, F&& f) {
  switch (dtype) {
#define BNORM_DTYPE_CASE(T, S, name) \
  case DType::name:                  \
    return f.template operator()<T>();
    BNORM_FOR_EACH_TYPE(BNORM_DTYPE_CASE)
#undef BNORM_DTYPE_CASE
  }
  return f.template operator()<float>();  // unreachable for a valid DType
}

// "float32", "float64", "bfloat16" or "float16".
inline const char* dtype_name(DType dtype) {
  return visit_dtype(dtype, []<class T>() { return dtype_of<T>::name; });
}

}  // namespace bnorm
