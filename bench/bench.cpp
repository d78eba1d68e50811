// bnorm against oneDNN and PyTorch, on the same data, in one process.
//
// For every (shape, layout, op, threads, cache state) row the implementations
// take turns (rotating who goes first) together with a STREAM-like copy, so
// that the machine's drift between turns hits all of them alike; the table
// gives medians, ratios and bnorm's bandwidth under the byte model as a
// fraction of the copy bandwidth measured in the same turns.
//
// Byte model (tensor of B bytes in the row's element type): fwd-train 3B
// (read x twice, write y), fwd-infer 2B, bwd 5B (read x and dy twice, write
// dx). STREAM copy counts 2 bytes moved per byte copied, as STREAM does.
//
// Fused ops (--ops; bnorm/fused.hpp), bnorm's bytes: relu-fwd 3B (read x
// twice, write y = relu(bn(x))), add-relu-fwd 4B (and read the residual r),
// relu-bwd 7B (read dy, y (the mask) and x in the reduction and again in the
// dx pass, write dx), add-relu-bwd 7B (the reduction also writes dresidual =
// dz, which the dx pass reads with x in place of dy and y). Their anchors:
// oneDNN's batch norm with fuse_norm_relu (relu rows only: oneDNN has no
// add+ReLU fusion on the CPU), which keeps a 1-bit-per-element workspace in
// place of y (fwd 3B + B/32 for f32, bwd 5B + 2 x B/32); PyTorch's unfused
// sequence as torchvision's BasicBlock runs it (native_batch_norm, in-place
// add and relu_; backward threshold_backward then native_batch_norm_backward,
// dresidual being dz itself): fwd 5B (8B with the add), bwd 8B.
//
// Element types (--dtype f32,f64,bf16,f16): x, y, dy, dx in the type;
// weights and statistics float (double for f64), as bnorm::param_t. Anchors
// run what they support: oneDNN bf16 (and f16 where its CPU build has it),
// PyTorch bfloat16 with float weights (and Half where it has a CPU kernel)
// and float64; a row an anchor cannot run shows n/a.
#include <omp.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <bnorm/fused.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#ifdef BNORM_BENCH_DNNL
#include <dnnl.hpp>
#endif
#ifdef BNORM_BENCH_TORCH
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/InferenceMode.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;

// 64-byte aligned buffer of n elements of elem bytes (float unless told),
// first-touched at allocation.
struct Buffer {
  float* data = nullptr;
  size_t size = 0;
  explicit Buffer(size_t n = 0, size_t elem = sizeof(float)) : size(n) {
    if (n == 0) return;
    data = static_cast<float*>(std::aligned_alloc(64, (n * elem + 63) / 64 * 64));
    if (!data) throw std::bad_alloc();
    std::memset(data, 0, n * elem);
  }
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(data);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : data(o.data), size(o.size) { o.data = nullptr; }
  ~Buffer() { std::free(data); }
};

void fill_normal(Buffer& b, uint64_t seed, float mean, float stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  for (size_t i = 0; i < b.size; ++i) b.data[i] = dist(rng);
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

enum class DType { f32, f64, bf16, f16 };
const char* dtype_name(DType t) {
  return t == DType::f32 ? "f32" : t == DType::f64 ? "f64" : t == DType::bf16 ? "bf16" : "f16";
}
size_t dtype_bytes(DType t) { return t == DType::f64 ? 8 : t == DType::f32 ? 4 : 2; }
// f.template operator()<T>() for the element type t.
template <class F>
decltype(auto) with_type(DType t, F&& f) {
  switch (t) {
    case DType::f64:
      return f.template operator()<double>();
    case DType::bf16:
      return f.template operator()<bnorm::bfloat16>();
    case DType::f16:
      return f.template operator()<bnorm::float16>();
    default:
      return f.template operator()<float>();
  }
}

// n normal values rounded to T.
template <class T>
void fill_typed(Buffer& b, uint64_t seed, float mean, float stddev) {
  Buffer f(b.size);
  fill_normal(f, seed, mean, stddev);
  for (size_t i = 0; i < b.size; ++i) b.as<T>()[i] = T(f.data[i]);
}

// Plain batch norm, and the fused BN+ReLU and BN+add+ReLU (training).
enum class Op { fwd_train, fwd_infer, bwd, relu_fwd, relu_bwd, add_relu_fwd, add_relu_bwd };
constexpr Op kOps[] = {Op::fwd_train, Op::fwd_infer,    Op::bwd,         Op::relu_fwd,
                       Op::relu_bwd,  Op::add_relu_fwd, Op::add_relu_bwd};
const char* op_name(Op op) {
  switch (op) {
    case Op::fwd_train:
      return "fwd-train";
    case Op::fwd_infer:
      return "fwd-infer";
    case Op::bwd:
      return "bwd";
    case Op::relu_fwd:
      return "relu-fwd";
    case Op::relu_bwd:
      return "relu-bwd";
    case Op::add_relu_fwd:
      return "add-relu-fwd";
    case Op::add_relu_bwd:
      return "add-relu-bwd";
  }
  return "?";
}
// bnorm's bytes moved, in tensors (see the byte model at the top).
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
bool has_residual(Op op) { return op == Op::add_relu_fwd || op == Op::add_relu_bwd; }

struct Dims {
  int64_t n, c, h, w;
};

// Everything one (shape, layout, dtype) row needs, shared by all
// implementations: tensors in the element type, per-channel values in its
// parameter type (float, or double for f64).
struct Data {
  Dims dims;
  bnorm::Shape shape;
  DType dtype;
  Buffer x, dy, weight, bias, rm, rv, y, dx, mean, invstd, var, dw, db;
  // Fused ops: the residual, relu(bn(x)) and relu(bn(x) + r) (the masks
  // their backward reads), and dresidual.
  Buffer r, y_relu, y_add, dr;
  Data(Dims d, bnorm::Layout layout, DType t)
      : dims(d),
        shape{d.n, d.c, d.h * d.w, layout},
        dtype(t),
        x(size_t(shape.numel()), dtype_bytes(t)),
        dy(size_t(shape.numel()), dtype_bytes(t)),
        weight(size_t(d.c), pbytes()),
        bias(size_t(d.c), pbytes()),
        rm(size_t(d.c), pbytes()),
        rv(size_t(d.c), pbytes()),
        y(size_t(shape.numel()), dtype_bytes(t)),
        dx(size_t(shape.numel()), dtype_bytes(t)),
        mean(size_t(d.c), pbytes()),
        invstd(size_t(d.c), pbytes()),
        var(size_t(d.c), pbytes()),
        dw(size_t(d.c), pbytes()),
        db(size_t(d.c), pbytes()),
        r(size_t(shape.numel()), dtype_bytes(t)),
        y_relu(size_t(shape.numel()), dtype_bytes(t)),
        y_add(size_t(shape.numel()), dtype_bytes(t)),
        dr(size_t(shape.numel()), dtype_bytes(t)) {
    with_type(t, [&]<class T>() {
      using P = bnorm::param_t<T>;
      fill_typed<T>(x, 1, 0.5f, 2.0f);
      fill_typed<T>(dy, 2, 0.0f, 1.0f);
      fill_typed<P>(weight, 3, 1.0f, 0.2f);
      fill_typed<P>(bias, 4, 0.0f, 0.2f);
      // Batch statistics for backward and running statistics for inference.
      bnorm::forward_training<T>(shape, x.as<T>(), weight.as<P>(), bias.as<P>(), y.as<T>(),
                                 mean.as<P>(), invstd.as<P>(), nullptr, nullptr);
      for (int64_t k = 0; k < d.c; ++k) {
        const P is = invstd.as<P>()[k];
        var.as<P>()[k] = P(1) / (is * is) - P(1e-5);
        rm.as<P>()[k] = mean.as<P>()[k];
        rv.as<P>()[k] = var.as<P>()[k];
      }
      fill_typed<T>(r, 5, 0.0f, 1.0f);
      const bnorm::Epilogue relu{bnorm::Activation::relu};
      bnorm::fused_forward_training<T>(shape, x.as<T>(), nullptr, weight.as<P>(), bias.as<P>(),
                                       y_relu.as<T>(), mean.as<P>(), invstd.as<P>(), nullptr,
                                       nullptr, {}, relu);
      bnorm::fused_forward_training<T>(shape, x.as<T>(), r.as<T>(), weight.as<P>(), bias.as<P>(),
                                       y_add.as<T>(), mean.as<P>(), invstd.as<P>(), nullptr,
                                       nullptr, {}, relu);
    });
  }
  size_t pbytes() const { return dtype == DType::f64 ? 8 : 4; }
  double bytes() const { return double(shape.numel()) * double(dtype_bytes(dtype)); }
};

constexpr double kEps = 1e-5;

struct Impl {
  std::string name;
  // Returns the callable for an op, or nullopt where the library cannot run it.
  std::function<std::optional<std::function<void()>>(Data&, Op)> make;
  std::function<void(int)> set_threads;
};

Impl bnorm_impl() {
  Impl impl;
  impl.name = "bnorm";
  impl.set_threads = [](int t) { bnorm::set_num_threads(t); };
  impl.make = [](Data& d, Op op) -> std::optional<std::function<void()>> {
    return with_type(d.dtype, [&]<class T>() -> std::optional<std::function<void()>> {
      using P = bnorm::param_t<T>;
      switch (op) {
        case Op::fwd_train:
          return [&d] {
            bnorm::forward_training<T>(d.shape, d.x.as<T>(), d.weight.as<P>(), d.bias.as<P>(),
                                       d.y.as<T>(), d.mean.as<P>(), d.invstd.as<P>(), d.rm.as<P>(),
                                       d.rv.as<P>());
          };
        case Op::fwd_infer:
          return [&d] {
            bnorm::forward_inference<T>(d.shape, d.x.as<T>(), d.weight.as<P>(), d.bias.as<P>(),
                                        d.rm.as<P>(), d.rv.as<P>(), d.y.as<T>(), kEps);
          };
        case Op::bwd:
          return [&d] {
            bnorm::backward<T>(d.shape, d.dy.as<T>(), d.x.as<T>(), d.weight.as<P>(), d.mean.as<P>(),
                               d.invstd.as<P>(), d.dx.as<T>(), d.dw.as<P>(), d.db.as<P>());
          };
        case Op::relu_fwd:
        case Op::add_relu_fwd: {
          const T* r = has_residual(op) ? d.r.as<T>() : nullptr;
          return [&d, r] {
            bnorm::fused_forward_training<T>(d.shape, d.x.as<T>(), r, d.weight.as<P>(),
                                             d.bias.as<P>(), d.y.as<T>(), d.mean.as<P>(),
                                             d.invstd.as<P>(), d.rm.as<P>(), d.rv.as<P>(), {},
                                             bnorm::Epilogue{bnorm::Activation::relu});
          };
        }
        case Op::relu_bwd:
        case Op::add_relu_bwd: {
          const bool add = has_residual(op);
          return [&d, add] {
            bnorm::fused_backward<T>(d.shape, d.dy.as<T>(), (add ? d.y_add : d.y_relu).as<T>(),
                                     d.x.as<T>(), d.weight.as<P>(), d.mean.as<P>(),
                                     d.invstd.as<P>(), d.dx.as<T>(), d.dw.as<P>(), d.db.as<P>(),
                                     add ? d.dr.as<T>() : nullptr,
                                     bnorm::Epilogue{bnorm::Activation::relu});
          };
        }
      }
      return std::nullopt;
    });
  };
  return impl;
}

#ifdef BNORM_BENCH_DNNL
// oneDNN: primitives built once per (data, op); user memory wraps the shared
// buffers (no copies), outputs are preallocated.
struct DnnlState {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};

Impl dnnl_impl() {
  auto state = std::make_shared<DnnlState>();
  Impl impl;
  impl.name = "oneDNN";
  impl.set_threads = [](int t) { omp_set_num_threads(t); };
  impl.make = [state](Data& d, Op op) -> std::optional<std::function<void()>> {
    using namespace dnnl;
    using tag = memory::format_tag;
    if (d.dtype == DType::f64) return std::nullopt;  // no f64 in oneDNN
    const auto dt = d.dtype == DType::bf16  ? memory::data_type::bf16
                    : d.dtype == DType::f16 ? memory::data_type::f16
                                            : memory::data_type::f32;
    // Scale, shift and statistics stay f32 for every source type.
    const memory::desc md({d.dims.n, d.dims.c, d.dims.h, d.dims.w}, dt,
                          d.shape.layout == bnorm::Layout::NCHW ? tag::nchw : tag::nhwc);
    const memory::desc cd({d.dims.c}, memory::data_type::f32, tag::a);
    auto& eng = state->engine;
    auto mem = [&](const memory::desc& desc, Buffer& b) { return memory(desc, eng, b.data); };
    const auto flags = normalization_flags::use_scale | normalization_flags::use_shift;
    // oneDNN's reference implementation ("ref:any", plain C++ loops, 100 to
    // 300 times slower than its JIT kernels) is no anchor: where the CPU
    // build has no JIT kernel for the type, the row shows n/a.
    const auto jit = [&](const auto& pd) {
      const std::string impl = pd.impl_info_str();
      if (impl.rfind("ref", 0) != 0) return true;
      std::fprintf(stderr, "oneDNN: %s %s: only %s, left out\n", dtype_name(d.dtype), op_name(op),
                   impl.c_str());
      return false;
    };
    if (has_residual(op)) return std::nullopt;  // no add+ReLU fusion on the CPU
    // BN+ReLU: fuse_norm_relu, whose training forward writes a workspace
    // (the ReLU mask) that its backward reads in place of y.
    const bool relu = op == Op::relu_fwd || op == Op::relu_bwd;
    const auto train_flags = relu ? flags | normalization_flags::fuse_norm_relu : flags;
    try {
      if (op == Op::relu_fwd) {
        batch_normalization_forward::primitive_desc pd(
            {prop_kind::forward_training, md, float(kEps), train_flags}, eng);
        if (!jit(pd)) return std::nullopt;
        auto prim = batch_normalization_forward(pd);
        auto m = std::make_shared<Buffer>(size_t(d.dims.c));
        auto v = std::make_shared<Buffer>(size_t(d.dims.c));
        auto ws = std::make_shared<memory>(pd.workspace_desc(), eng);
        std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, mem(md, d.x)},
                                                {DNNL_ARG_DST, mem(md, d.y)},
                                                {DNNL_ARG_SCALE, mem(cd, d.weight)},
                                                {DNNL_ARG_SHIFT, mem(cd, d.bias)},
                                                {DNNL_ARG_MEAN, mem(cd, *m)},
                                                {DNNL_ARG_VARIANCE, mem(cd, *v)},
                                                {DNNL_ARG_WORKSPACE, *ws}};
        return [state, prim, args, m, v, ws] {
          prim.execute(state->stream, args);
          state->stream.wait();
        };
      }
      if (op == Op::fwd_train || op == Op::fwd_infer) {
        const bool train = op == Op::fwd_train;
        const auto f = train ? flags : flags | normalization_flags::use_global_stats;
        batch_normalization_forward::primitive_desc pd(
            {train ? prop_kind::forward_training : prop_kind::forward_inference, md, float(kEps),
             f},
            eng);
        if (!jit(pd)) return std::nullopt;
        auto prim = batch_normalization_forward(pd);
        std::unordered_map<int, memory> args = {
            {DNNL_ARG_SRC, mem(md, d.x)},        {DNNL_ARG_DST, mem(md, d.y)},
            {DNNL_ARG_SCALE, mem(cd, d.weight)}, {DNNL_ARG_SHIFT, mem(cd, d.bias)},
            {DNNL_ARG_MEAN, mem(cd, d.rm)},      {DNNL_ARG_VARIANCE, mem(cd, d.rv)}};
        if (train) {
          // Its own batch statistics go to scratch outputs, not the inputs.
          auto m = std::make_shared<Buffer>(size_t(d.dims.c));
          auto v = std::make_shared<Buffer>(size_t(d.dims.c));
          args[DNNL_ARG_MEAN] = mem(cd, *m);
          args[DNNL_ARG_VARIANCE] = mem(cd, *v);
          return [state, prim, args, m, v] {
            prim.execute(state->stream, args);
            state->stream.wait();
          };
        }
        return [state, prim, args] {
          prim.execute(state->stream, args);
          state->stream.wait();
        };
      }
      batch_normalization_forward::primitive_desc fpd(
          {prop_kind::forward_training, md, float(kEps), train_flags}, eng);
      batch_normalization_backward::primitive_desc pd(
          {prop_kind::backward, md, md, float(kEps), train_flags}, eng, fpd);
      if (!jit(pd)) return std::nullopt;
      auto prim = batch_normalization_backward(pd);
      auto dscale = std::make_shared<Buffer>(size_t(d.dims.c));
      auto dshift = std::make_shared<Buffer>(size_t(d.dims.c));
      std::unordered_map<int, memory> args = {
          {DNNL_ARG_SRC, mem(md, d.x)},           {DNNL_ARG_DIFF_DST, mem(md, d.dy)},
          {DNNL_ARG_MEAN, mem(cd, d.mean)},       {DNNL_ARG_VARIANCE, mem(cd, d.var)},
          {DNNL_ARG_SCALE, mem(cd, d.weight)},    {DNNL_ARG_SHIFT, mem(cd, d.bias)},
          {DNNL_ARG_DIFF_SRC, mem(md, d.dx)},     {DNNL_ARG_DIFF_SCALE, mem(cd, *dscale)},
          {DNNL_ARG_DIFF_SHIFT, mem(cd, *dshift)}};
      std::shared_ptr<memory> ws;
      if (relu) {
        // The mask of this batch, from one forward run.
        ws = std::make_shared<memory>(fpd.workspace_desc(), eng);
        auto m = std::make_shared<Buffer>(size_t(d.dims.c));
        auto v = std::make_shared<Buffer>(size_t(d.dims.c));
        batch_normalization_forward(fpd).execute(state->stream,
                                                 {{DNNL_ARG_SRC, mem(md, d.x)},
                                                  {DNNL_ARG_DST, mem(md, d.y)},
                                                  {DNNL_ARG_SCALE, mem(cd, d.weight)},
                                                  {DNNL_ARG_SHIFT, mem(cd, d.bias)},
                                                  {DNNL_ARG_MEAN, mem(cd, *m)},
                                                  {DNNL_ARG_VARIANCE, mem(cd, *v)},
                                                  {DNNL_ARG_WORKSPACE, *ws}});
        state->stream.wait();
        args[DNNL_ARG_WORKSPACE] = *ws;
      }
      return [state, prim, args, dscale, dshift, ws] {
        prim.execute(state->stream, args);
        state->stream.wait();
      };
    } catch (const dnnl::error& e) {
      std::fprintf(stderr, "oneDNN: %s %s: %s\n", dtype_name(d.dtype), op_name(op), e.what());
      return std::nullopt;
    }
  };
  return impl;
}
#endif

#ifdef BNORM_BENCH_TORCH
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
#endif

// STREAM-like copy b = a over arrays far larger than L3.
struct Stream {
  Buffer a, b;
  explicit Stream(size_t floats) : a(floats), b(floats) { fill_normal(a, 9, 0, 1); }
  double run(int threads) {  // seconds
    const int64_t count = int64_t(a.size);
    const float* src = a.data;
    float* dst = b.data;
    const auto t0 = Clock::now();
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < count; ++i) dst[i] = src[i];
    return seconds_since(t0);
  }
  double bytes() const { return 2.0 * double(a.size) * sizeof(float); }
};

// Evicts the caches: touches a buffer larger than L3.
struct Sweep {
  Buffer buf;
  explicit Sweep(size_t floats) : buf(floats) {}
  void run() {
    float* p = buf.data;
    const int64_t count = int64_t(buf.size);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i) p[i] += 1.f;
  }
};

struct Row {
  std::string shape, layout, op, cache;
  int threads;
  std::vector<double> ms;  // per implementation, NaN if not run
  double stream_gbs, bytes;
  DType dtype = DType::f32;
  double numel = 0;
  double f32_ms = NAN;       // bnorm's f32 on the same case in the same turns (other dtypes)
  std::string key() const {  // the row of the same case in another dtype
    return shape + layout + op + cache + std::to_string(threads);
  }
};

struct Config {
  bool quick = false;
  std::string markdown;
  std::vector<int> threads{1, 2};
  int reps = 0;
  std::vector<Dims> shapes;  // empty: the standard list
  std::vector<DType> dtypes{DType::f32};
  std::vector<Op> ops{Op::fwd_train, Op::fwd_infer, Op::bwd};
};

std::string fmt(const char* f, double v) {
  if (std::isnan(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      cfg.quick = true;
    } else if (a == "--markdown" && i + 1 < argc) {
      cfg.markdown = argv[++i];
    } else if (a == "--threads" && i + 1 < argc) {
      cfg.threads.clear();
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) cfg.threads.push_back(std::stoi(t));
    } else if (a == "--shape" && i + 1 < argc) {
      Dims d{};
      if (std::sscanf(argv[++i], "%ld,%ld,%ld,%ld", &d.n, &d.c, &d.h, &d.w) != 4 || d.n < 1 ||
          d.c < 1 || d.h < 1 || d.w < 1 || d.n * d.c * d.h * d.w < 2) {
        std::fprintf(stderr, "--shape: expected n,c,h,w (positive), got %s\n", argv[i]);
        return 2;
      }
      cfg.shapes.push_back(d);
    } else if (a == "--dtype" && i + 1 < argc) {
      cfg.dtypes.clear();
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) {
        if (t == "f32") {
          cfg.dtypes.push_back(DType::f32);
        } else if (t == "f64") {
          cfg.dtypes.push_back(DType::f64);
        } else if (t == "bf16") {
          cfg.dtypes.push_back(DType::bf16);
        } else if (t == "f16") {
          cfg.dtypes.push_back(DType::f16);
        } else {
          std::fprintf(stderr, "--dtype: expected f32, f64, bf16 or f16, got %s\n", t.c_str());
          return 2;
        }
      }
    } else if (a == "--ops" && i + 1 < argc) {
      cfg.ops.clear();
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) {
        const Op* op =
            std::find_if(std::begin(kOps), std::end(kOps), [&](Op o) { return t == op_name(o); });
        if (op == std::end(kOps)) {
          std::fprintf(stderr,
                       "--ops: expected fwd-train, fwd-infer, bwd, relu-fwd, relu-bwd, "
                       "add-relu-fwd or add-relu-bwd, got %s\n",
                       t.c_str());
          return 2;
        }
        cfg.ops.push_back(*op);
      }
    } else if (a == "--reps" && i + 1 < argc) {
      cfg.reps = std::stoi(argv[++i]);
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--quick] [--markdown FILE] [--threads 1,2] [--reps N] [--shape n,c,h,w]...\n"
          "          [--dtype f32,f64,bf16,f16] [--ops fwd-train,fwd-infer,bwd]\n"
          "ops: fwd-train fwd-infer bwd (batch norm), relu-fwd relu-bwd add-relu-fwd\n"
          "     add-relu-bwd (fused BN+ReLU and BN+add+ReLU, training)\n"
          "unknown argument: %s\n",
          argv[0], a.c_str());
      return 2;
    }
  }
  for (int t : cfg.threads)
    if (t < 1) {
      std::fprintf(stderr, "--threads: counts must be >= 1, got %d\n", t);
      return 2;
    }
  const int reps = cfg.reps > 0 ? cfg.reps : cfg.quick ? 3 : 15;

  std::vector<Impl> impls{bnorm_impl()};
#ifdef BNORM_BENCH_DNNL
  impls.push_back(dnnl_impl());
#endif
#ifdef BNORM_BENCH_TORCH
  impls.push_back(torch_impl());
#endif

  const std::vector<Dims> shapes =
      !cfg.shapes.empty() ? cfg.shapes
      : cfg.quick         ? std::vector<Dims>{{8, 64, 28, 28}, {256, 512, 1, 1}}
                          : std::vector<Dims>{{32, 64, 56, 56},  {32, 256, 14, 14}, {64, 512, 7, 7},
                                              {8, 32, 128, 128}, {256, 2048, 1, 1}, {16, 128, 112, 112}};
  const size_t big = cfg.quick ? (size_t(8) << 20) : (size_t(24) << 20);  // floats
  Stream stream(big);
  Sweep sweep(big);

  std::vector<Row> rows;
  for (const Dims& dims : shapes)
    for (auto layout : {bnorm::Layout::NCHW, bnorm::Layout::NHWC}) {
      // Rows of another dtype also time bnorm's float32 on the same case,
      // in the same turns: their "vs f32" then compares times the
      // machine's drift hit alike (rows of separate passes differed by up
      // to 1.5x on this shared machine).
      std::optional<Data> f32_data;
      for (DType dtype : cfg.dtypes) {
        Data data(dims, layout, dtype);
        const bool twin = dtype != DType::f32;
        if (twin && !f32_data) f32_data.emplace(dims, layout, DType::f32);
        const std::string shape_name = "(" + std::to_string(dims.n) + "," + std::to_string(dims.c) +
                                       "," + std::to_string(dims.h) + "," + std::to_string(dims.w) +
                                       ")";
        for (Op op : cfg.ops) {
          for (int threads : cfg.threads) {
            omp_set_num_threads(threads);
            for (auto& impl : impls) impl.set_threads(threads);
            // After the thread count is set: oneDNN fixes its thread count when
            // it creates a primitive.
            std::vector<std::optional<std::function<void()>>> fns;
            for (auto& impl : impls) fns.push_back(impl.make(data, op));
            if (twin) fns.push_back(impls[0].make(*f32_data, op));
            for (bool cold : {false, true}) {
              std::vector<std::vector<double>> times(fns.size());
              std::vector<double> copies;
              for (auto& f : fns)
                if (f) (*f)();  // warm-up (first-touch, primitive caches)
              for (int r = 0; r < reps; ++r) {
                copies.push_back(stream.run(threads));
                for (size_t j = 0; j < fns.size(); ++j) {
                  const size_t i = (j + size_t(r)) % fns.size();  // rotate who goes first
                  if (!fns[i]) continue;
                  if (cold) {
                    sweep.run();
                  } else {
                    (*fns[i])();  // back-to-back: the previous call warmed the caches
                  }
                  const auto t0 = Clock::now();
                  (*fns[i])();
                  times[i].push_back(seconds_since(t0) * 1e3);
                }
              }
              Row row{shape_name,
                      layout == bnorm::Layout::NCHW ? "NCHW" : "NHWC",
                      op_name(op),
                      cold ? "cold" : "warm",
                      threads,
                      {},
                      stream.bytes() / median(copies) / 1e9,
                      data.bytes() * byte_factor(op),
                      dtype,
                      double(data.shape.numel())};
              for (size_t i = 0; i < impls.size(); ++i) row.ms.push_back(median(times[i]));
              if (twin) row.f32_ms = median(times.back());
              rows.push_back(row);
              std::fprintf(stderr, "%s %s %s %s %dT %s: bnorm %.3f ms\n", row.shape.c_str(),
                           row.layout.c_str(), dtype_name(dtype), row.op.c_str(), threads,
                           row.cache.c_str(), row.ms[0]);
            }
          }
        }
      }
    }

  // The table.
  std::map<std::string, double> f32_ms;  // bnorm's f32 time of each case
  for (const Row& r : rows)
    if (r.dtype == DType::f32) f32_ms[r.key()] = r.ms[0];
  std::ostringstream out;
  out << "Byte model: fwd-train 3x, fwd-infer 2x, bwd 5x the tensor's bytes in the row's dtype; "
         "fused (bnorm's): relu-fwd 3x, add-relu-fwd 4x, relu-bwd 7x, add-relu-bwd 7x. Fused "
         "rows: oneDNN is its fuse_norm_relu (no add+ReLU fusion: n/a), PyTorch its unfused "
         "native_batch_norm, add_, relu_ (backward threshold_backward, "
         "native_batch_norm_backward). "
         "GB/s = model bytes / bnorm's median time; % STREAM = that over the STREAM copy "
         "bandwidth measured in the same turns (2 x bytes copied). Gelem/s = tensor elements / "
         "bnorm's median time; vs f32 = bnorm's f32 time of the same case, timed in the same "
         "turns, "
         "/ this row's (elements per second over bnorm's own f32).\n"
         "Speed-up = other's median ms / bnorm's; best = the faster of the others that run the "
         "dtype (n/a: cannot).\n\n";
  out << "| shape | layout | dtype | op | thr | cache |";
  for (auto& impl : impls) out << " " << impl.name << " ms |";
  for (size_t i = 1; i < impls.size(); ++i) out << " vs " << impls[i].name << " |";
  if (impls.size() > 1) out << " vs best |";
  out << " bnorm GB/s | Gelem/s | vs f32 | STREAM GB/s | % STREAM |\n|";
  const size_t cols = 12 + impls.size() + (impls.size() - 1) + (impls.size() > 1 ? 1 : 0);
  for (size_t i = 0; i < cols; ++i) out << "---|";
  out << "\n";
  struct Summary {
    std::map<std::string, std::vector<double>> logs;  // by cache state, and "all"
    int behind = 0, rows = 0;
    double worst = INFINITY;
    std::string worst_row;
    std::vector<double> vs_f32, vs_f32_big;  // logs of elements/s over bnorm's f32
  };
  std::map<DType, Summary> sums;
  for (const Row& r : rows) {
    Summary& sum = sums[r.dtype];
    ++sum.rows;
    out << "| " << r.shape << " | " << r.layout << " | " << dtype_name(r.dtype) << " | " << r.op
        << " | " << r.threads << " | " << r.cache << " |";
    for (double ms : r.ms) out << " " << fmt("%.3f", ms) << " |";
    double best = NAN;
    for (size_t i = 1; i < r.ms.size(); ++i) {
      out << " " << fmt("%.2fx", r.ms[i] / r.ms[0]) << " |";
      if (!std::isnan(r.ms[i])) best = std::isnan(best) ? r.ms[i] : std::min(best, r.ms[i]);
    }
    if (impls.size() > 1) {
      const double speedup = best / r.ms[0];
      out << " " << fmt("%.2fx", speedup) << " |";
      if (!std::isnan(speedup)) {
        sum.logs[r.cache].push_back(std::log(speedup));
        sum.logs["all"].push_back(std::log(speedup));
        if (speedup < 1) ++sum.behind;
        if (speedup < sum.worst) {
          sum.worst = speedup;
          sum.worst_row = r.shape + " " + r.layout + " " + r.op + " " + std::to_string(r.threads) +
                          "T " + r.cache;
        }
      }
    }
    const double gbs = r.bytes / (r.ms[0] * 1e-3) / 1e9;
    double vs_f32 = NAN;
    if (r.dtype != DType::f32 && (std::isfinite(r.f32_ms) || f32_ms.count(r.key()))) {
      vs_f32 = (std::isfinite(r.f32_ms) ? r.f32_ms : f32_ms[r.key()]) / r.ms[0];
      sum.vs_f32.push_back(std::log(vs_f32));
      if (r.shape == "(16,128,112,112)") sum.vs_f32_big.push_back(std::log(vs_f32));
    }
    out << " " << fmt("%.1f", gbs) << " | " << fmt("%.2f", r.numel / (r.ms[0] * 1e-3) / 1e9)
        << " | " << fmt("%.2fx", vs_f32) << " | " << fmt("%.1f", r.stream_gbs) << " | "
        << fmt("%.0f%%", 100 * gbs / r.stream_gbs) << " |\n";
  }
  out << "\n";
  const auto geomean = [](const std::vector<double>& logs) {
    double t = 0;
    for (double l : logs) t += l;
    return logs.empty() ? NAN : std::exp(t / double(logs.size()));
  };
  for (auto& [dtype, sum] : sums) {
    const std::string name = dtype_name(dtype);
    for (auto& [key, v] : sum.logs)
      out << name << ": geometric-mean speed-up over the faster anchor (" << key << " rows, "
          << v.size() << "): " << fmt("%.2fx", geomean(v)) << "\n";
    if (!sum.logs.empty())
      out << name << ": rows where bnorm is behind the faster anchor: " << sum.behind << " of "
          << sum.logs["all"].size() << "; slowest row: " << sum.worst_row << " at "
          << fmt("%.2fx", sum.worst) << "\n";
    else if (impls.size() > 1)
      out << name << ": no anchor runs this dtype\n";
    if (!sum.vs_f32.empty())
      out << name << ": elements/s over bnorm's f32, geometric mean over " << sum.vs_f32.size()
          << " rows: " << fmt("%.2fx", geomean(sum.vs_f32))
          << "; on (16,128,112,112): " << fmt("%.2fx", geomean(sum.vs_f32_big)) << "\n";
  }
  out << "Anchors built in:";
  for (size_t i = 1; i < impls.size(); ++i) out << " " << impls[i].name;
  if (impls.size() == 1) out << " none (bnorm alone)";
  out << "\n";
  const std::string table = out.str();
  std::fputs(table.c_str(), stdout);
  if (!cfg.markdown.empty()) {
    std::ofstream f(cfg.markdown);
    f << table;
    if (!f) {
      std::fprintf(stderr, "--markdown: cannot write %s\n", cfg.markdown.c_str());
      return 1;
    }
  }
  return 0;
}
