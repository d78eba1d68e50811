// Included before the documentation's C++ fragments (marked
// <!-- docs-test: prelude -->); prelude_main.inc then declares their
// variables at the top of main(), and the fragment runs in a block after it.
#pragma once

#include <bnorm/bnorm.hpp>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace bnorm_docs {

inline std::vector<float> random_values(int64_t count, float offset) {
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(offset, 1.0f);
  std::vector<float> v(static_cast<size_t>(count));
  for (auto& e : v) e = dist(rng);
  return v;
}

}  // namespace bnorm_docs
