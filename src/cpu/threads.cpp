// The thread count the kernels use: set_num_threads, else OpenMP's default
// (OMP_NUM_THREADS, or one per core).
#include <omp.h>

#include <atomic>
#include <bnorm/bnorm.hpp>
#include <stdexcept>
#include <string>

#include "kernels.hpp"

namespace bnorm {
namespace {
std::atomic<int> requested_threads{0};
}

void set_num_threads(int threads) {
  if (threads < 0)
    throw std::invalid_argument(
        "bnorm::set_num_threads: threads must be >= 0 (0 = OpenMP default), got " +
        std::to_string(threads));
  requested_threads.store(threads, std::memory_order_relaxed);
}

int num_threads() { return cpu::thread_count(); }

namespace cpu {
int thread_count() {
  const int t = requested_threads.load(std::memory_order_relaxed);
  return t > 0 ? t : omp_get_max_threads();
}
}  // namespace cpu

}  // namespace bnorm
