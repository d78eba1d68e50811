// Tensors of more than 2^31 elements (8.6 GB each in float32): training
// forward and backward must index them with 64 bits. Two buffers of 2^31+
// floats are live at a time (17.2 GB), so this runs only where memory allows:
// ctest label "large", skipped when /proc/meminfo reports less than
// BNORM_LARGE_MIN_GB (default 18) available; see scripts/test.sh.
//
// The oracle is a plain double loop over the same buffers (int64 indices,
// one channel at a time) and the header's formulas evaluated in double at a
// sample of indices that includes the last ones, past 2^31.
#include <gtest/gtest.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace bnorm::test {
namespace {

constexpr int64_t kTwo31 = int64_t(1) << 31;

double available_gb() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  long long kb = 0;
  std::string unit;
  while (meminfo >> key >> kb >> unit)
    if (key == "MemAvailable:") return double(kb) / (1024.0 * 1024.0);
  return 0;
}

double min_gb() {
  const char* text = std::getenv("BNORM_LARGE_MIN_GB");
  return text ? std::atof(text) : 18.0;
}

// A value that depends on the element's full 64-bit index (a wrong or
// truncated index reads another value), on [-1, 1), scaled and offset per
// channel.
float value_at(int64_t index, int64_t k) {
  uint64_t z = uint64_t(index) * 0x9E3779B97F4A7C15ull;
  z ^= z >> 29;
  z *= 0xBF58476D1CE4E5B9ull;
  z ^= z >> 32;
  const double u = double(z >> 11) * 0x1.0p-52 - 1.0;
  return float(double(k + 1) * u + 3.0 * double(k));
}

int64_t offset(const Shape& s, int64_t k, int64_t i) {  // i: position in the channel
  const int64_t sample = i / s.s, pos = i % s.s;
  return s.layout == Layout::NCHW ? (sample * s.c + k) * s.s + pos : (sample * s.s + pos) * s.c + k;
}

// Indices of channel k to compare: the first, the last (past 2^31 for the
// last channels) and a strided sample in between.
std::vector<int64_t> sample(const Shape& s) {
  std::vector<int64_t> out;
  const int64_t m = s.m();
  for (int64_t i = 0; i < m; i += m / 4099 + 1) out.push_back(i);
  for (int64_t i = std::max<int64_t>(0, m - 64); i < m; ++i) out.push_back(i);
  return out;
}

double tolerance(const Shape& s) {
  // A few roundings per value plus the depth of the blocked reduction.
  return 4 * double(std::numeric_limits<float>::epsilon()) * std::log2(double(s.m()));
}

void run(const Shape& shape) {
  ASSERT_GT(shape.numel(), kTwo31);
  if (available_gb() < min_gb())
    GTEST_SKIP() << "needs " << min_gb() << " GB available, " << available_gb() << " GB are";
  const int64_t numel = shape.numel(), m = shape.m(), c = shape.c;
  std::unique_ptr<float[]> a(new float[size_t(numel)]), b(new float[size_t(numel)]);
  for (int64_t k = 0; k < c; ++k)
    for (int64_t i = 0; i < m; ++i) {
      const int64_t at = offset(shape, k, i);
      a[size_t(at)] = value_at(at, k);
    }
  std::vector<float> gamma(static_cast<size_t>(c)), beta(static_cast<size_t>(c)),
      mean(static_cast<size_t>(c)), invstd(static_cast<size_t>(c)), rm(size_t(c), 0.f),
      rv(size_t(c), 1.f);
  for (int64_t k = 0; k < c; ++k) {
    gamma[size_t(k)] = 1.5f + 0.25f * float(k);
    beta[size_t(k)] = -0.5f * float(k);
  }
  forward_training<float>(shape, a.get(), gamma.data(), beta.data(), b.get(), mean.data(),
                          invstd.data(), rm.data(), rv.data());
  const double tol = tolerance(shape);
  for (int64_t k = 0; k < c; ++k) {
    SCOPED_TRACE("channel " + std::to_string(k));
    double sum = 0;
    for (int64_t i = 0; i < m; ++i) sum += double(a[size_t(offset(shape, k, i))]);
    const double mu = sum / double(m);
    double m2 = 0;
    for (int64_t i = 0; i < m; ++i) {
      const double d = double(a[size_t(offset(shape, k, i))]) - mu;
      m2 += d * d;
    }
    const double var = m2 / double(m), want_invstd = 1.0 / std::sqrt(var + 1e-5);
    const double spread = double(k + 1) + 3.0 * double(k);  // max |x|
    EXPECT_NEAR(mean[size_t(k)], mu, tol * spread);
    EXPECT_NEAR(invstd[size_t(k)], want_invstd, tol * want_invstd);
    EXPECT_NEAR(rm[size_t(k)], 0.1 * mu, tol * spread);
    EXPECT_NEAR(rv[size_t(k)], 0.9 + 0.1 * var * double(m) / double(m - 1), tol);
    for (int64_t i : sample(shape)) {
      const int64_t at = offset(shape, k, i);
      const double want =
          gamma[size_t(k)] * (double(a[size_t(at)]) - mu) * want_invstd + beta[size_t(k)];
      ASSERT_NEAR(b[size_t(at)], want, tol * (gamma[size_t(k)] * spread * want_invstd + 1))
          << "y at " << at;
    }
  }

  // Backward with dy = x = y of the forward (buffer b; both are inputs) and
  // dx into buffer a; save_mean/save_invstd other than y's own statistics,
  // so that dx does not cancel to zero and every index shows.
  std::vector<float> smean(static_cast<size_t>(c)), sinvstd(static_cast<size_t>(c)),
      dweight(static_cast<size_t>(c)), dbias(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k) {
    smean[size_t(k)] = beta[size_t(k)] + 0.5f;
    sinvstd[size_t(k)] = 0.7f / gamma[size_t(k)];
  }
  backward<float>(shape, b.get(), b.get(), gamma.data(), smean.data(), sinvstd.data(), a.get(),
                  dweight.data(), dbias.data());
  for (int64_t k = 0; k < c; ++k) {
    SCOPED_TRACE("channel " + std::to_string(k));
    const double mu = smean[size_t(k)], is = sinvstd[size_t(k)];
    double sum_dy = 0, sum_dy_xhat = 0, abs_dy = 0, abs_dy_xhat = 0;
    for (int64_t i = 0; i < m; ++i) {
      const double v = b[size_t(offset(shape, k, i))];
      sum_dy += v;
      sum_dy_xhat += v * (v - mu) * is;
      abs_dy += std::abs(v);
      abs_dy_xhat += std::abs(v * (v - mu) * is);
    }
    EXPECT_NEAR(dbias[size_t(k)], sum_dy, tol * abs_dy);
    EXPECT_NEAR(dweight[size_t(k)], sum_dy_xhat, tol * abs_dy_xhat);
    const double g_is = gamma[size_t(k)] * is;
    for (int64_t i : sample(shape)) {
      const int64_t at = offset(shape, k, i);
      const double v = b[size_t(at)], xhat = (v - mu) * is;
      const double want = g_is * (v - sum_dy / double(m) - xhat * sum_dy_xhat / double(m));
      const double scale =
          g_is * (std::abs(v) + abs_dy / double(m) + std::abs(xhat) * abs_dy_xhat / double(m));
      ASSERT_NEAR(a[size_t(at)], want, tol * scale) << "dx at " << at;
    }
  }
}

// One channel of more than 2^31 values: the per-channel count itself is
// past int32.
TEST(Large, NchwOneChannelPast2To31) { run({2, 1, (int64_t(1) << 30) + 7, Layout::NCHW}); }

// Channels last with spatial positions: 15 * 143165579 = 2^31 + 37 elements.
TEST(Large, NhwcPast2To31) { run({3, 5, 143165579, Layout::NHWC}); }

}  // namespace
}  // namespace bnorm::test
