// The PyTorch anchor. Its fused rows are the unfused sequence torchvision's
// BasicBlock runs (native_batch_norm, in-place add and relu_; backward
// threshold_backward then native_batch_norm_backward, dresidual being dz
// itself): fwd 5B (8B with the add), bwd 8B (B: the tensor's bytes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <unordered_map>

#include "bench.hpp"

namespace bench {
namespace {

// PyTorch allocates its outputs on every call; fresh pages would cost more
// than the kernel on large shapes, so a caching allocator hands back
// already-touched blocks of the same size (the effect of preallocated
// outputs) and the timing is the kernel's.
class CachingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) const override {
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        p = it->second;
        free_.erase(it);
      }
    }
    if (!p) {
      p = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64));
      if (!p) throw std::bad_alloc();
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[p] = bytes;
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  static CachingAllocator& get() {
    static CachingAllocator instance;
    return instance;
  }

 private:
  static void release(void* p) {
    auto& self = get();
    std::lock_guard<std::mutex> lock(self.mutex_);
    self.free_.emplace(self.sizes_.at(p), p);
  }
  mutable std::mutex mutex_;
  mutable std::unordered_multimap<size_t, void*> free_;
  mutable std::unordered_map<void*, size_t> sizes_;
};

}  // namespace

Impl torch_impl() {
  c10::SetCPUAllocator(&CachingAllocator::get(), 100);
  Impl impl;
  impl.name = "PyTorch";
  impl.set_threads = [](int t) { at::set_num_threads(t); };
  impl.make = [](Data& d, Op op) -> std::optional<std::function<void()>> {
    const auto type = d.dtype == DType::f64    ? at::kDouble
                      : d.dtype == DType::bf16 ? at::kBFloat16
                      : d.dtype == DType::f16  ? at::kHalf
                                               : at::kFloat;
    const auto opts = at::TensorOptions().dtype(type);
    // Weights and statistics: float (double for f64), as torch's mixed-type
    // CPU batch norm takes them.
    const auto popts = at::TensorOptions().dtype(d.dtype == DType::f64 ? at::kDouble : at::kFloat);
    const auto [n, c, h, w] = d.dims;
    std::vector<int64_t> sizes{n, c, h, w};
    std::vector<int64_t> strides = d.shape.layout == bnorm::Layout::NCHW
                                       ? std::vector<int64_t>{c * h * w, h * w, w, 1}
                                       : std::vector<int64_t>{h * w * c, 1, w * c, c};
    auto t4 = [&](Buffer& b) { return at::from_blob(b.data, sizes, strides, opts); };
    auto t1 = [&](Buffer& b) { return at::from_blob(b.data, {c}, popts); };
    auto x = t4(d.x), dy = t4(d.dy), wt = t1(d.weight), bt = t1(d.bias), rm = t1(d.rm),
         rv = t1(d.rv), sm = t1(d.mean), si = t1(d.invstd);
    // Running statistics updated by the training forward go to copies.
    auto rm2 = rm.clone(), rv2 = rv.clone();
    auto r = t4(d.r), y_relu = t4(d.y_relu), y_add = t4(d.y_add);
    std::function<void()> f;
    switch (op) {
      case Op::fwd_train:
        f = [=] {
          c10::InferenceMode guard;
          auto out = at::native_batch_norm(x, wt, bt, rm2, rv2, true, 0.1, kEps);
        };
        break;
      case Op::fwd_infer:
        f = [=] {
          c10::InferenceMode guard;
          auto out = at::native_batch_norm(x, wt, bt, rm, rv, false, 0.1, kEps);
        };
        break;
      case Op::bwd:
        f = [=] {
          c10::InferenceMode guard;
          auto out = at::native_batch_norm_backward(dy, x, wt, rm, rv, sm, si, true, kEps,
                                                    {true, true, true});
        };
        break;
      case Op::relu_fwd:
      case Op::add_relu_fwd: {
        const bool add = has_residual(op);
        f = [=] {
          c10::InferenceMode guard;
          auto out = std::get<0>(at::native_batch_norm(x, wt, bt, rm2, rv2, true, 0.1, kEps));
          if (add) out.add_(r);
          out.relu_();
        };
        break;
      }
      case Op::relu_bwd:
      case Op::add_relu_bwd: {
        const auto y = has_residual(op) ? y_add : y_relu;
        // dresidual is dz itself (add's backward passes the gradient on).
        f = [=] {
          c10::InferenceMode guard;
          auto dz = at::threshold_backward(dy, y, 0);
          auto out = at::native_batch_norm_backward(dz, x, wt, rm, rv, sm, si, true, kEps,
                                                    {true, true, true});
        };
        break;
      }
    }
    // A dtype without a CPU kernel (or without mixed float weights) throws.
    try {
      f();
    } catch (const c10::Error& e) {
      const std::string what = e.what_without_backtrace();
      std::fprintf(stderr, "PyTorch: %s %s: %s\n", dtype_name(d.dtype), op_name(op),
                   what.substr(0, what.find('\n')).c_str());
      return std::nullopt;
    }
    return f;
  };
  return impl;
}

}  // namespace bench
