#include "bandwidth.hpp"

namespace bench {

double byte_factor(Op op) {
  switch (op) {
    case Op::fwd_train:
    case Op::relu_fwd:
      return 3;
    case Op::fwd_infer:
      return 2;
    case Op::bwd:
      return 5;
    case Op::add_relu_fwd:
      return 4;
    case Op::relu_bwd:
    case Op::add_relu_bwd:
      return 7;
  }
  return 0;
}

double Stream::run(int threads) {
  const int64_t count = int64_t(a.size);
  const float* src = a.data;
  float* dst = b.data;
  const auto t0 = Clock::now();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < count; ++i) dst[i] = src[i];
  return seconds_since(t0);
}

void Sweep::run() {
  float* p = buf.data;
  const int64_t count = int64_t(buf.size);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) p[i] += 1.f;
}

}  // namespace bench
