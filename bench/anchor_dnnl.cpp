// The oneDNN anchor, whose fused rows are its batch norm with fuse_norm_relu
// (relu rows only: oneDNN has no add+ReLU fusion on the CPU). It keeps a
// 1-bit-per-element workspace in place of y: fwd 3B + B/32 for f32, bwd
// 5B + 2 x B/32 (B: the tensor's bytes).
#include <omp.h>

#include <cstdio>
#include <dnnl.hpp>
#include <memory>
#include <unordered_map>

#include "bench.hpp"

namespace bench {
namespace {

// oneDNN: primitives built once per (data, op); user memory wraps the shared
// buffers (no copies), outputs are preallocated.
struct DnnlState {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};

}  // namespace

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

}  // namespace bench
