// The helpers every part of the benchmark shares, and the data of one row:
// normal inputs rounded to the row's type, with the batch statistics and the
// fused forward outputs that the backward and inference ops read.
#include <algorithm>
#include <bnorm/fused.hpp>
#include <cmath>
#include <random>

#include "bench.hpp"

namespace bench {

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

const char* dtype_name(DType t) {
  return t == DType::f32 ? "f32" : t == DType::f64 ? "f64" : t == DType::bf16 ? "bf16" : "f16";
}

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

namespace {

// n normal values rounded to T.
template <class T>
void fill_typed(Buffer& b, uint64_t seed, float mean, float stddev) {
  Buffer f(b.size);
  fill_normal(f, seed, mean, stddev);
  for (size_t i = 0; i < b.size; ++i) b.as<T>()[i] = T(f.data[i]);
}

}  // namespace

Data::Data(Dims d, bnorm::Layout layout, DType t)
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
                                     y_relu.as<T>(), mean.as<P>(), invstd.as<P>(), nullptr, nullptr,
                                     {}, relu);
    bnorm::fused_forward_training<T>(shape, x.as<T>(), r.as<T>(), weight.as<P>(), bias.as<P>(),
                                     y_add.as<T>(), mean.as<P>(), invstd.as<P>(), nullptr, nullptr,
                                     {}, relu);
  });
}

}  // namespace bench
