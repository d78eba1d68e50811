// What the libFuzzer harnesses share: decoding a fuzzer input into the
// arguments of a bnorm call, the harness's own model of which arguments are
// valid (written from the contract in include/bnorm/bnorm.hpp, not from
// src/validate.hpp), and the error bounds against the double reference.
//
// Every call the harnesses make must end one of two ways:
//  - the arguments break the contract: std::invalid_argument, and every
//    output buffer (and the running statistics) byte for byte unchanged;
//  - they do not: no exception, and every output whose reference value is
//    finite (and representable in T) is finite and within the bound below.
// Anything else stops the fuzzer through fuzz_fail(), which prints why and
// aborts, so that libFuzzer saves the input as a crash.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>
#include <hwy/targets.h>

#include <bnorm/bnorm.hpp>
#include <bnorm/reference.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace bnorm::fuzz {

// What the harness is checking, printed with a finding.
inline std::string& context() {
  static std::string text;
  return text;
}

// The Highway target this input runs on, printed with a finding.
inline const char*& target_name() {
  static const char* name = "default";
  return name;
}

[[noreturn]] inline void fuzz_fail(const std::string& why) {
  std::fprintf(stderr, "bnorm fuzz: %s\n  while checking: %s\n  on Highway target %s\n",
               why.c_str(), context().c_str(), target_name());
  std::abort();
}

// Every harness runs each input on one of the Highway targets this binary
// carries and this CPU supports, chosen by the input's first byte as the
// shape is chosen by others: the decoders read from the back
// (FuzzedDataProvider::ConsumeIntegral), so the seeds keep their meaning and
// the fuzzer can move an input to another target by one byte. With
// BNORM_FUZZ_EVERY_TARGET set, each input runs on every one of them in turn
// (ctest replays the committed seeds so, so that a seed found on one target
// is checked on all).
template <class F>
void on_targets(const uint8_t* data, size_t size, F&& run) {
  // Read once, before the first SetSupportedTargetsForTest narrows it.
  static const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  static const bool every = std::getenv("BNORM_FUZZ_EVERY_TARGET") != nullptr;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (!every && i != (size == 0 ? 0 : data[0] % targets.size())) continue;
    hwy::SetSupportedTargetsForTest(targets[i]);
    target_name() = hwy::TargetName(targets[i]);
    run();
  }
}

// Tensors past this many elements are not allocated: a valid shape larger
// than this is skipped (tests/large covers the 64-bit sizes), an invalid one
// still gets small buffers, which the call must reject without touching.
inline constexpr int64_t kMaxNumel = int64_t(1) << 15;
// Buffer size handed to calls whose shape is invalid.
inline constexpr size_t kInvalidShapeNumel = 16;

// Shape fields: mostly small sizes (with an occasional long spatial extent,
// so that the kernels' larger work units run), sometimes a value from the
// edges of int64 whose products overflow or go negative.
inline int64_t wild_extent(FuzzedDataProvider& in) {
  static constexpr int64_t kWild[] = {0,
                                      -1,
                                      -7,
                                      std::numeric_limits<int64_t>::min(),
                                      std::numeric_limits<int64_t>::max(),
                                      int64_t(1) << 31,
                                      (int64_t(1) << 31) + 1,
                                      int64_t(1) << 32,
                                      3037000500,  // its square exceeds int64
                                      int64_t(1) << 62};
  return kWild[in.ConsumeIntegralInRange<size_t>(0, std::size(kWild) - 1)];
}

inline int64_t extent(FuzzedDataProvider& in, int64_t small_max, int64_t long_max) {
  const uint8_t mode = in.ConsumeIntegral<uint8_t>();
  if (mode < 200) return in.ConsumeIntegralInRange<int64_t>(1, small_max);
  if (mode < 235) return in.ConsumeIntegralInRange<int64_t>(1, long_max);
  return wild_extent(in);
}

inline Shape decode_shape(FuzzedDataProvider& in) {
  Shape s;
  s.n = extent(in, 9, 64);
  s.c = extent(in, 6, 40);
  s.s = extent(in, 12, 1500);
  const uint8_t layout = in.ConsumeIntegral<uint8_t>();
  s.layout = layout < 250 ? static_cast<Layout>(layout & 1) : static_cast<Layout>(layout - 248);
  return s;
}

// The contract's shape rule: n, c, s >= 1, a known layout, n*c*s in int64.
inline bool shape_valid(const Shape& s) {
  if (s.n < 1 || s.c < 1 || s.s < 1) return false;
  if (s.layout != Layout::NCHW && s.layout != Layout::NHWC) return false;
  int64_t nc = 0, ncs = 0;
  return !__builtin_mul_overflow(s.n, s.c, &nc) && !__builtin_mul_overflow(nc, s.s, &ncs);
}

inline double decode_eps(FuzzedDataProvider& in) {
  static constexpr double kEps[] = {1e-5,
                                    1e-3,
                                    0.1,
                                    1e-12,
                                    1e-300,
                                    1e30,
                                    std::numeric_limits<double>::denorm_min(),
                                    0.0,
                                    -0.0,
                                    -1e-5,
                                    std::numeric_limits<double>::quiet_NaN(),
                                    std::numeric_limits<double>::infinity()};
  return kEps[in.ConsumeIntegralInRange<size_t>(0, std::size(kEps) - 1)];
}

inline bool eps_valid(double eps) { return std::isfinite(eps) && eps > 0; }

inline std::optional<double> decode_momentum(FuzzedDataProvider& in) {
  static constexpr double kMomentum[] = {0.1,
                                         0.0,
                                         1.0,
                                         0.5,
                                         1e-300,
                                         -0.1,
                                         1.0000001,
                                         std::numeric_limits<double>::quiet_NaN(),
                                         -std::numeric_limits<double>::infinity()};
  const size_t i = in.ConsumeIntegralInRange<size_t>(0, std::size(kMomentum));
  if (i == std::size(kMomentum)) return std::nullopt;
  return kMomentum[i];
}

inline bool momentum_valid(std::optional<double> momentum) {
  return !momentum || (std::isfinite(*momentum) && *momentum >= 0 && *momentum <= 1);
}

inline int64_t decode_batches(FuzzedDataProvider& in) {
  static constexpr int64_t kBatches[] = {1, 2, 7, 0, -1, std::numeric_limits<int64_t>::max()};
  return kBatches[in.ConsumeIntegralInRange<size_t>(0, std::size(kBatches) - 1)];
}

// Small deterministic generator for the bulk of the values, seeded from the
// input, so that short inputs still describe full tensors.
struct SplitMix {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {
    const double u = uniform() + 0x1.0p-54, v = uniform();
    return std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};

template <class T>
T special_value(size_t i) {
  using L = std::numeric_limits<T>;
  const T table[] = {L::quiet_NaN(), L::infinity(),   -L::infinity(),   L::max(), -L::max(),
                     L::min(),       L::denorm_min(), -L::denorm_min(), T(0),     T(-0.0)};
  return table[i % std::size(table)];
}

// Values of one tensor, channel by channel in the shape's layout. Each
// channel draws a kind: ordinary values at a random scale and offset, a
// constant, values near +-max (whose float sum of squares overflows), raw
// bit patterns (NaN, Inf, denormals included), or ordinary values with a few
// special values sprinkled in.
template <class T>
std::vector<T> decode_tensor(FuzzedDataProvider& in, const Shape& shape, SplitMix& rng) {
  std::vector<T> out(size_t(shape.numel()));
  const int64_t m = shape.m();
  for (int64_t k = 0; k < shape.c; ++k) {
    const uint8_t kind = in.ConsumeIntegral<uint8_t>() % 6;
    const double scale = std::ldexp(1.0, in.ConsumeIntegralInRange<int>(-40, 40));
    const double offset =
        in.ConsumeBool() ? 0.0 : scale * std::ldexp(1.0, in.ConsumeIntegralInRange<int>(-4, 24));
    const T constant = special_value<T>(in.ConsumeIntegral<uint8_t>());
    for (int64_t i = 0; i < m; ++i) {
      const int64_t sample = i / shape.s, pos = i % shape.s;
      const int64_t at = shape.layout == Layout::NCHW ? (sample * shape.c + k) * shape.s + pos
                                                      : (sample * shape.s + pos) * shape.c + k;
      T v;
      switch (kind) {
        case 0:
        default:
          v = T(offset + scale * rng.normal());
          break;
        case 1:
          v = std::isfinite(double(constant)) ? constant : T(offset);
          break;
        case 2:
          v = T((rng.next() & 1 ? 1 : -1) * double(std::numeric_limits<T>::max()) *
                (0.5 + 0.5 * rng.uniform()));
          break;
        case 3: {
          using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
          const Bits bits = Bits(rng.next());
          std::memcpy(&v, &bits, sizeof v);
          break;
        }
        case 4:
          v = rng.next() % 16 == 0 ? special_value<T>(size_t(rng.next() % 10))
                                   : T(offset + scale * rng.normal());
          break;
      }
      out[size_t(at)] = v;
    }
  }
  return out;
}

// Per-channel parameters (weight, bias, running statistics): ordinary values,
// occasionally zero, negative or special.
template <class T>
std::vector<T> decode_params(FuzzedDataProvider& in, int64_t c, SplitMix& rng, double center,
                             double spread) {
  std::vector<T> out(static_cast<size_t>(c));
  const uint8_t kind = in.ConsumeIntegral<uint8_t>();
  for (auto& v : out) {
    if (kind < 220)
      v = T(center + spread * rng.normal());
    else if (kind < 240)
      v = T(0);
    else
      v = special_value<T>(size_t(rng.next()));
  }
  return out;
}

template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// The unit roundoff of T: the "documented per-dtype bound" below is a small
// multiple of it.
template <class T>
constexpr double unit_roundoff() {
  return std::numeric_limits<T>::epsilon() / 2;
}

// Bound factor: a few roundings per operation plus the worst-case growth of
// a sum of m terms, (m - 1) u (the float kernels sum in blocks and merge in
// double and do far better; the double kernels sum straight along).
template <class T>
double bound_factor(int64_t m) {
  return unit_roundoff<T>() * (16.0 + double(m));
}

// A floor under the variance's absolute error. Below DBL_MIN double holds
// values on a grid of denorm_min (a variance of 4.7e-317 keeps 7 significant
// digits), and both sides land there: the double reference rounds each
// square (x - mean)^2 and then sum / m, the kernels round M2 as they scale
// it back from their rescue pass (src/cpu/fast_common-inl.h) and then
// M2 / m: half a step each, within 2 steps in all (4 for margin). Neither
// side can do better with var in a double; it shows where eps is as small
// (5e-324, 1e-300), when invstd = 1/sqrt(var + eps) is 1e158.
inline constexpr double kVarianceFloor = 4 * std::numeric_limits<double>::denorm_min();

// A reference value that T can hold: finite, and inside T's range (a float
// output whose exact value is 1e39 is right to be Inf).
template <class T>
bool representable(double want) {
  return std::isfinite(want) && std::abs(want) <= double(std::numeric_limits<T>::max());
}

inline std::string describe(const Shape& s) {
  return "shape (n " + std::to_string(s.n) + ", c " + std::to_string(s.c) + ", s " +
         std::to_string(s.s) + (s.layout == Layout::NCHW ? ", NCHW)" : ", NHWC)");
}

inline std::string num(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", v);
  return text;
}

template <class T>
void expect_close(const char* what, int64_t index, T got, double want, double bound) {
  if (!representable<T>(want)) return;
  const double g = double(got);
  // Rounding to T's grid near zero loses up to half its smallest denormal.
  bound += double(std::numeric_limits<T>::denorm_min());
  if (!std::isfinite(g) || !(std::abs(g - want) <= bound))
    fuzz_fail(std::string(what) + "[" + std::to_string(index) + "] = " + num(g) + ", reference " +
              num(want) + ", error " + num(std::abs(g - want)) + " > bound " + num(bound));
}

// A documented limit (docs/reliability.md): the float32 backward sums
// dy * (x - mean) in float, so a channel whose sums of those magnitudes pass
// FLT_MAX gets NaN or Inf gradients where the double reference is finite.
// The harnesses skip such channels, and only those: `magnitude` is the
// channel's sum of |dy| * (|x| + |mean|), with and without invstd, which
// bounds every float partial sum. The forward statistics have no such limit:
// their kernels sum again, prescaled, whatever overflows float
// (src/cpu/fast_common-inl.h), and the harnesses check every channel.
inline constexpr bool kOverflowSafeStatistics = false;

inline int64_t& skipped_overflow() {
  static int64_t count = 0;
  return count;
}

template <class T>
bool known_overflow(double magnitude) {
  if (kOverflowSafeStatistics || !std::is_same_v<T, float>) return false;
  const bool overflows = !(magnitude < double(std::numeric_limits<float>::max()));
  if (overflows) ++skipped_overflow();
  return overflows;
}

// The kernels fold the affine map into y = x * a + b with a = weight *
// invstd and b = bias - mean * a, each of type T (PyTorch's kernels do the
// same). Where a, x * a or b overflows T (a float channel with var + eps
// below about 1e-76, or a weight near FLT_MAX) y is Inf or NaN although the
// double reference, which never forms those products, is finite. A
// documented limit, not checked: the harnesses skip y (and dx) of such
// channels. spread bounds |x| and |mean| over the channel.
template <class T>
bool scale_overflows(double gamma, double beta, double invstd, double spread) {
  const double a = std::abs(gamma * invstd);
  const double max = double(std::numeric_limits<T>::max());
  // x - mean itself must fit T too.
  return !(a * std::max(spread, 1.0) + std::abs(beta) <= max) || !(spread <= max);
}

// The other end of T's range: where the largest |dy| * invstd or
// (|x| + |mean|) * invstd is below T's smallest normal, the products the
// kernels form lose most of their significand (or all of it, to 0); the
// harnesses then skip dweight and dx of the channel (a documented limit).
template <class T>
bool products_underflow(double max_dy, double spread, double invstd) {
  const double smallest = double(std::numeric_limits<T>::min());
  for (double p : {max_dy * std::abs(invstd), spread * std::abs(invstd)})
    if (p != 0 && p < smallest) return true;
  return false;
}

// Runs call() and reports whether it threw std::invalid_argument (whose
// message must name the function); any other exception is a finding.
template <class F>
bool rejected(const char* fn, F&& call) {
  try {
    call();
  } catch (const std::invalid_argument& e) {
    if (std::strncmp(e.what(), "bnorm::", 7) != 0 || std::strstr(e.what(), fn) == nullptr)
      fuzz_fail(std::string(fn) + ": the error does not name the function: " + e.what());
    return true;
  } catch (const std::exception& e) {
    fuzz_fail(std::string(fn) + ": threw something other than std::invalid_argument: " + e.what());
  }
  return false;
}

// The outcome must match the harness's model of the contract.
inline void expect_outcome(const char* fn, bool valid, bool threw) {
  if (valid && threw) fuzz_fail(std::string(fn) + ": rejected arguments the contract allows");
  if (!valid && !threw) fuzz_fail(std::string(fn) + ": accepted arguments the contract forbids");
}

// Bytes of a buffer, to prove nothing was written.
template <class T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

}  // namespace bnorm::fuzz
