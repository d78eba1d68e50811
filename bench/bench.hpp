// bnorm against oneDNN and PyTorch, on the same data, in one process.
//
// For every (shape, layout, op, threads, cache state) row the implementations
// take turns (rotating who goes first) together with a STREAM-like copy, so
// that the machine's drift between turns hits all of them alike; the table
// gives medians, ratios and bnorm's bandwidth under the byte model as a
// fraction of the copy bandwidth measured in the same turns.
//
// The files, by concern: this header (buffers, element types, ops, the data
// of one row and the Impl interface), data.cpp (filling them),
// impl_bnorm.cpp, anchor_dnnl.cpp and anchor_torch.cpp (the implementations
// that take turns), bandwidth.{hpp,cpp} (byte model, STREAM copy, cache
// sweep), rows.{hpp,cpp} (the turns that time one row), table.cpp (the
// markdown table and its summary), main.cpp (options).
//
// Element types (--dtype f32,f64,bf16,f16): x, y, dy, dx in the type;
// weights and statistics float (double for f64), as bnorm::param_t. Anchors
// run what they support: oneDNN bf16 (and f16 where its CPU build has it),
// PyTorch bfloat16 with float weights (and Half where it has a CPU kernel)
// and float64; a row an anchor cannot run shows n/a.
#pragma once

#include <bnorm/bnorm.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <optional>
#include <string>
#include <vector>

namespace bench {

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

void fill_normal(Buffer& b, uint64_t seed, float mean, float stddev);
double seconds_since(Clock::time_point t0);
double median(std::vector<double> v);

enum class DType { f32, f64, bf16, f16 };
const char* dtype_name(DType t);
inline size_t dtype_bytes(DType t) { return t == DType::f64 ? 8 : t == DType::f32 ? 4 : 2; }
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

// Plain batch norm, and the fused BN+ReLU and BN+add+ReLU (training).
enum class Op { fwd_train, fwd_infer, bwd, relu_fwd, relu_bwd, add_relu_fwd, add_relu_bwd };
constexpr Op kOps[] = {Op::fwd_train, Op::fwd_infer,    Op::bwd,         Op::relu_fwd,
                       Op::relu_bwd,  Op::add_relu_fwd, Op::add_relu_bwd};
const char* op_name(Op op);
inline bool has_residual(Op op) { return op == Op::add_relu_fwd || op == Op::add_relu_bwd; }

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
  Data(Dims d, bnorm::Layout layout, DType t);
  size_t pbytes() const { return dtype == DType::f64 ? 8 : 4; }
  double bytes() const { return double(shape.numel()) * double(dtype_bytes(dtype)); }
};

constexpr double kEps = 1e-5;

// One implementation taking turns: bnorm itself or an anchor.
struct Impl {
  std::string name;
  // Returns the callable for an op, or nullopt where the library cannot run it.
  std::function<std::optional<std::function<void()>>(Data&, Op)> make;
  std::function<void(int)> set_threads;
};

Impl bnorm_impl();
#ifdef BNORM_BENCH_DNNL
Impl dnnl_impl();
#endif
#ifdef BNORM_BENCH_TORCH
Impl torch_impl();
#endif

}  // namespace bench
