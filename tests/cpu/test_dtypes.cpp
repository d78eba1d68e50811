// bfloat16 and float16: the scalar conversions against hand-computed bit
// patterns and independent oracles (the compiler's _Float16, and a
// nearest-candidate search in double for bfloat16), and the kernels' vector
// conversions on every SIMD target against the scalar ones.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>

#include "../common.hpp"

namespace bnorm::test {
namespace {

float from_bits(uint32_t u) { return std::bit_cast<float>(u); }

uint16_t bf16(float f) { return bfloat16(f).bits; }
uint16_t f16(float f) { return float16(f).bits; }

// Round to nearest even by search: the two bfloat16 neighbours of f (by
// truncation and one ulp above, in magnitude), the nearer one in double,
// the even one on a tie. Past the largest finite the upper neighbour is
// Inf, which counts as 2^128 (rounding as if the exponent had no bound).
uint16_t bf16_oracle(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint16_t lo = uint16_t((u & 0x7fffffffu) >> 16), hi = uint16_t(lo + 1);
  const double a = std::abs(double(f));
  const double vlo = double(from_bits(uint32_t(lo) << 16));
  const double vhi = hi == 0x7f80 ? std::ldexp(1.0, 128) : double(from_bits(uint32_t(hi) << 16));
  const double dlo = a - vlo, dhi = vhi - a;
  const uint16_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return uint16_t(sign | pick);
}

TEST(Bfloat16, HandComputedBitPatterns) {
  EXPECT_EQ(bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16(-2.0f), 0xc000);
  EXPECT_EQ(bf16(0.0f), 0x0000);
  EXPECT_EQ(bf16(-0.0f), 0x8000);
  // Halfway cases: ties go to the even neighbour.
  EXPECT_EQ(bf16(from_bits(0x3f808000)), 0x3f80);  // 1 + 2^-8: down to 1 (even)
  EXPECT_EQ(bf16(from_bits(0x3f818000)), 0x3f82);  // 1 + 3*2^-8: up to even
  EXPECT_EQ(bf16(from_bits(0x3f808001)), 0x3f81);  // just above half: up
  EXPECT_EQ(bf16(from_bits(0x3f807fff)), 0x3f80);  // just below half: down
  // Largest finite bfloat16 (0x7f7f, 3.3895e38) and rounding past it.
  EXPECT_EQ(float(bfloat16::from_bits(0x7f7f)), from_bits(0x7f7f0000));
  EXPECT_EQ(bf16(from_bits(0x7f7f7fff)), 0x7f7f);
  EXPECT_EQ(bf16(from_bits(0x7f7f8000)), 0x7f80);  // tie, 0x7f7f odd: to Inf
  EXPECT_EQ(bf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(bf16(-std::numeric_limits<float>::max()), 0xff80);
  EXPECT_EQ(bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  // NaN stays NaN, made quiet, even when the payload sits in the low bits
  // (truncation alone would turn 0x7f800001 into Inf).
  EXPECT_EQ(bf16(from_bits(0x7fc00000)), 0x7fc0);
  EXPECT_EQ(bf16(from_bits(0x7f800001)), 0x7fc0);
  EXPECT_EQ(bf16(from_bits(0xff800001)), 0xffc0);
  EXPECT_EQ(bf16(from_bits(0x7fffffff)), 0x7fff);
  // Subnormals: bfloat16 has float's, with 7 fraction bits.
  EXPECT_EQ(bf16(from_bits(0x00010000)), 0x0001);
  EXPECT_EQ(bf16(from_bits(0x00008000)), 0x0000);  // tie to even (0)
  EXPECT_EQ(bf16(from_bits(0x00018000)), 0x0002);  // tie to even (2)
  EXPECT_EQ(bf16(from_bits(0x00000001)), 0x0000);
  EXPECT_EQ(float(bfloat16::from_bits(0x0001)), from_bits(0x00010000));
}

TEST(Bfloat16, EveryValueRoundTripsAndWidensExactly) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = float(bfloat16::from_bits(uint16_t(b)));
    EXPECT_EQ(std::bit_cast<uint32_t>(f), b << 16);
    if (!std::isnan(f)) {
      EXPECT_EQ(bf16(f), b);
    } else {
      EXPECT_TRUE(std::isnan(float(bfloat16(f))));
    }
  }
}

TEST(Bfloat16, MatchesNearestCandidateSearch) {
  std::mt19937 rng(11);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = uint32_t(rng());
    if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // exact ties
    const float f = from_bits(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(bf16(f), bf16_oracle(f)) << std::hex << u;
  }
}

TEST(Float16, HandComputedBitPatterns) {
  EXPECT_EQ(f16(1.0f), 0x3c00);
  EXPECT_EQ(f16(-2.0f), 0xc000);
  EXPECT_EQ(f16(-0.0f), 0x8000);
  EXPECT_EQ(f16(65504.0f), 0x7bff);  // largest finite
  EXPECT_EQ(f16(65519.996f), 0x7bff);
  EXPECT_EQ(f16(65520.0f), 0x7c00);  // tie with 0x7bff odd: to Inf
  EXPECT_EQ(f16(1e6f), 0x7c00);
  EXPECT_EQ(f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(f16(1.0f + 0x1p-11f), 0x3c00);      // tie: down to even
  EXPECT_EQ(f16(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie: up to even
  EXPECT_EQ(f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
  EXPECT_EQ(f16(0x1p-14f), 0x0400);             // smallest normal
  EXPECT_EQ(f16(1023 * 0x1p-24f), 0x03ff);      // largest subnormal
  EXPECT_EQ(f16(0x1p-24f), 0x0001);             // smallest subnormal
  EXPECT_EQ(f16(0x1p-25f), 0x0000);             // tie: to even (0)
  EXPECT_EQ(f16(1.5f * 0x1p-25f * 2), 0x0002);  // 3 * 2^-25: tie to 2
  EXPECT_EQ(f16(0x1p-25f * 1.0001f), 0x0001);
  EXPECT_EQ(f16(1e-10f), 0x0000);
  EXPECT_EQ(f16(-1e-10f), 0x8000);
  EXPECT_EQ(f16(0x1p-14f - 0x1p-25f), 0x0400);  // rounds up into the normals
  EXPECT_EQ(f16(from_bits(0x7fc00000)), 0x7e00);
  EXPECT_EQ(f16(from_bits(0x7f800001)) & 0x7e00, 0x7e00);  // quiet NaN
  EXPECT_EQ(float(float16::from_bits(0x0001)), 0x1p-24f);
  EXPECT_EQ(float(float16::from_bits(0x7bff)), 65504.0f);
  EXPECT_TRUE(std::isnan(float(float16::from_bits(0x7c01))));
}

// GCC's _Float16 (IEEE binary16, round to nearest even by libgcc or F16C) as
// the oracle: every float16 value widened, and a sweep of floats narrowed.
TEST(Float16, MatchesCompilerFloat16) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    _Float16 h;
    const uint16_t bits = uint16_t(b);
    std::memcpy(&h, &bits, 2);
    const float want = float(h), got = float(float16::from_bits(bits));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << b;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << b;
    }
  }
  std::mt19937 rng(12);
  for (int i = 0; i < 2000000; ++i) {
    // Exponents around float16's range (subnormals to overflow), any
    // fraction, every fourth an exact tie at float16's normal precision.
    uint32_t u = (uint32_t(rng()) & 0x807fffffu) | ((100u + uint32_t(rng()) % 48u) << 23);
    if (i % 4 == 0) u = (u & 0xffffe000u) | 0x1000u;
    const float f = from_bits(u);
    const _Float16 h = _Float16(f);
    uint16_t want;
    std::memcpy(&want, &h, 2);
    ASSERT_EQ(f16(f), want) << std::hex << u;
  }
}

// The kernels' vector conversions (load, compute in float, round, store) on
// every target against the scalar ones: inference with mean 0, variance 1
// and a weight w makes y = x * w, exact in float (the significands' bits
// add up to at most 24), so y must be the scalar rounding of x * w. Every
// bit pattern of T is an x: zeros, subnormals, the largest finite, Inf,
// NaN; w = 1 checks the round trip, the other w's put the product between
// two values of T, ties included.
template <class T>
void check_vector_conversions(float w) {
  const int64_t count = 0x10000;
  std::vector<T> x(count);
  for (int64_t i = 0; i < count; ++i) x[size_t(i)] = T::from_bits(uint16_t(i));
  std::vector<T> want(count);
  for (int64_t i = 0; i < count; ++i) want[size_t(i)] = T(std::fma(float(x[size_t(i)]), w, 0.0f));
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    // One long plane (NCHW: vector loop, tail), and rows of 64 and of 37
    // channels (NHWC: narrow rows, wide rows with a scalar tail).
    for (const Shape shape : {Shape{1, 1, count, Layout::NCHW}, Shape{1024, 64, 1, Layout::NHWC},
                              Shape{1, 37, 1771, Layout::NHWC}}) {
      SCOPED_TRACE(std::string(hwy::TargetName(target)) + " " + describe(shape) +
                   " w=" + std::to_string(w));
      const size_t n = size_t(shape.numel()), c = size_t(shape.c);
      std::vector<float> weight(c, w), zero(c, 0.0f), one(c, 1.0f);
      std::vector<T> y(n);
      // eps = 1e-12: the scale w / sqrt(1 + eps) rounds to w in float.
      forward_inference<T>(shape, x.data(), weight.data(), zero.data(), zero.data(), one.data(),
                           y.data(), 1e-12);
      int bad = 0;
      for (size_t i = 0; i < n && bad < 5; ++i) {
        const bool ok = std::isnan(float(want[i])) ? std::isnan(float(y[i])) : y[i] == want[i];
        if (!ok) {
          ADD_FAILURE() << "x bits " << std::hex << x[i].bits << ": got " << y[i].bits << " want "
                        << want[i].bits;
          ++bad;
        }
      }
    }
  }
  hwy::SetSupportedTargetsForTest(0);
}

TEST(VectorConversions, Bfloat16EveryTarget) {
  for (float w : {1.0f, 1.0f + 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-9f, 0.75f + 0x1p-9f})
    check_vector_conversions<bfloat16>(w);
}

TEST(VectorConversions, Float16EveryTarget) {
  for (float w : {1.0f, 1.0f + 0x1p-11f, 1.0f + 0x1p-11f + 0x1p-12f, 0.75f + 0x1p-12f})
    check_vector_conversions<float16>(w);
}

}  // namespace
}  // namespace bnorm::test
