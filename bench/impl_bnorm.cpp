// bnorm's own turn: its free functions (bnorm/bnorm.hpp, bnorm/fused.hpp) on
// the row's buffers, outputs preallocated.
#include <bnorm/fused.hpp>

#include "bench.hpp"

namespace bench {

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

}  // namespace bench
