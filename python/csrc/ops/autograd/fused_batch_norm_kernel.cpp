// Autograd kernels of torch.ops.bnorm.fused_*, in C++ so that TorchScript
// (which cannot run a Python autograd.Function) can script the modules
// built on them.
//
// Training: the forward records a node whose backward calls
// fused_batch_norm_backward through the dispatcher; that op has its own node
// whose backward is the double backward. The activation's derivative is
// piecewise constant, so with M = act'(z) read off y (1, 0 or slope), the
// fused backward is batch norm's backward applied to dz = M dy (and
// dresidual = dz), and its double backward is batch norm's analytic one
// (autograd.h) on dz, with M applied once more to the gradient reaching dy.
// Backward from the output recomputes x_hat from y and the saved invstd,
// whose dependence on x autograd does not see: its double backward raises.
//
// Eval: without gradients the CPU kernel runs; with them (fine-tuning with
// frozen statistics, rare) the differentiable composition of bnorm's eval
// batch norm and ATen's add and activation does.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../batch_norm.h"
#include "../cpu/tensors.h"
#include "../fused_batch_norm.h"
#include "autograd.h"

namespace bnorm::ops {
namespace autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// gamma as the layer uses it, per channel: weight (1 when None), or
// |weight| + weight_eps with abs_weight; and d gamma / d weight.
struct Gamma {
  at::Tensor value, sign;
};
Gamma gamma_of(const at::Tensor& weight, int64_t channels, const at::TensorOptions& options,
               bool abs_weight, double weight_eps) {
  const at::Tensor w = weight.defined() ? weight : at::ones({channels}, options);
  if (!abs_weight) return {w, at::Tensor()};
  // sign(+-0) = +-1, as bnorm/fused.hpp: a zero weight still moves.
  const at::Tensor one = at::ones_like(w);
  return {w.abs() + weight_eps, at::where(w.signbit(), -one, one)};
}

// act'(z) read off y = act(z): 1 where y > 0, else 0 (relu) or slope.
at::Tensor act_mask(const at::Tensor& y, Activation act, double slope) {
  if (act == Activation::relu) return (y > 0).to(y.scalar_type());
  // Built in y's dtype, so that a float64 slope is not rounded to float32.
  if (act == Activation::leaky_relu)
    return at::where(y > 0, at::ones_like(y), at::full_like(y, slope));
  return at::Tensor();  // identity: 1
}

class TrainFunction : public torch::autograd::Function<TrainFunction> {
 public:
  static variable_list forward(
      AutogradContext* ctx, const Variable& input, const c10::optional<Variable>& residual,
      const c10::optional<Variable>& weight, const c10::optional<Variable>& bias,
      const c10::optional<Variable>& running_mean, const c10::optional<Variable>& running_var,
      c10::optional<double> momentum, int64_t num_batches_tracked, double eps, c10::string_view act,
      double slope, bool abs_weight, double weight_eps, bool save_output) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, save_mean, save_invstd] = fused_batch_norm_train(
        input, residual, weight, bias, running_mean, running_var, momentum, num_batches_tracked,
        eps, act, slope, abs_weight, weight_eps, save_output);
    mark_written(running_mean);
    mark_written(running_var);
    // Backward from the output keeps y alone (the point of save_output);
    // otherwise x as well, for x_hat.
    ctx->save_for_backward({y, save_output ? at::Tensor() : input, weight.value_or(at::Tensor()),
                            bias.value_or(at::Tensor()), save_mean, save_invstd});
    ctx->saved_data["act"] = std::string(act);
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["abs_weight"] = abs_weight;
    ctx->saved_data["weight_eps"] = weight_eps;
    ctx->saved_data["save_output"] = save_output;
    ctx->saved_data["mask"] = c10::List<bool>(
        {input.requires_grad(), wants_grad(weight), wants_grad(bias), wants_grad(residual)});
    ctx->mark_non_differentiable({save_mean, save_invstd});
    return {y, save_mean, save_invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto need = ctx->saved_data["mask"].toBoolList();
    variable_list out(14);  // one per argument of forward
    if (!grads[0].defined()) return out;
    auto [dx, dweight, dbias, dresidual] = fused_batch_norm_backward(
        grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
        ctx->saved_data["act"].toStringRef(), ctx->saved_data["slope"].toDouble(),
        ctx->saved_data["abs_weight"].toBool(), ctx->saved_data["weight_eps"].toDouble(),
        ctx->saved_data["save_output"].toBool(), {need[0], need[1], need[2], need[3]});
    out[0] = dx;
    out[1] = dresidual;
    out[2] = dweight;
    out[3] = dbias;
    return out;
  }
};

class BackwardFunction : public torch::autograd::Function<BackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& grad_out,
                               const Variable& output, const c10::optional<Variable>& input,
                               const c10::optional<Variable>& weight,
                               const c10::optional<Variable>& bias, const Variable& save_mean,
                               const Variable& save_invstd, c10::string_view act, double slope,
                               bool abs_weight, double weight_eps, bool from_output,
                               std::array<bool, 4> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dx, dweight, dbias, dresidual] =
        fused_batch_norm_backward(grad_out, output, input, weight, bias, save_mean, save_invstd,
                                  act, slope, abs_weight, weight_eps, from_output, output_mask);
    ctx->saved_data["from_output"] = from_output;
    if (!from_output) {
      ctx->save_for_backward({grad_out, output, input.value_or(at::Tensor()),
                              weight.value_or(at::Tensor()), save_mean, save_invstd});
      ctx->saved_data["act"] = std::string(act);
      ctx->saved_data["slope"] = slope;
      ctx->saved_data["abs_weight"] = abs_weight;
      ctx->saved_data["weight_eps"] = weight_eps;
      ctx->saved_data["need"] =
          c10::List<bool>({grad_out.requires_grad(), wants_grad(input), wants_grad(weight)});
    }
    ctx->saved_data["outputs"] =
        c10::List<bool>({output_mask[0], output_mask[1], output_mask[2], output_mask[3]});
    ctx->set_materialize_grads(false);
    // A node's outputs must be defined: gradients output_mask did not ask
    // for travel as empty tensors and are dropped again by the caller.
    auto placeholder = [&](const at::Tensor& t) {
      return t.defined() ? t : at::empty({0}, output.options());
    };
    return {placeholder(dx), placeholder(dweight), placeholder(dbias), placeholder(dresidual)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(13);
    const auto outputs = ctx->saved_data["outputs"].toBoolList();
    for (size_t i = 0; i < 4; ++i)
      if (!outputs[i]) grads[i] = at::Tensor();
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined() && !grads[3].defined())
      return out;
    TORCH_CHECK(!ctx->saved_data["from_output"].toBool(),
                "bnorm.fused_batch_norm_backward: double backward is not supported with "
                "save_output=True (backward from the output recomputes x_hat from y and the "
                "saved invstd, whose dependence on the input autograd does not record); use "
                "save_output=False for higher-order gradients");
    const auto saved = ctx->get_saved_variables();
    const auto need = ctx->saved_data["need"].toBoolList();
    const at::Tensor &dy = saved[0], &y = saved[1], &x = saved[2], &weight = saved[3];
    const Activation act = cpu::activation_of(ctx->saved_data["act"].toStringRef());
    // The mask's derivative is zero almost everywhere: y enters as a constant.
    const at::Tensor mask = act_mask(y.detach(), act, ctx->saved_data["slope"].toDouble());
    const at::Tensor dz = mask.defined() ? dy * mask : dy;
    const Gamma g =
        gamma_of(weight, x.size(1), saved[4].options(), ctx->saved_data["abs_weight"].toBool(),
                 ctx->saved_data["weight_eps"].toDouble());
    at::Tensor ggg = grads[1];
    if (ggg.defined() && g.sign.defined()) ggg = ggg * g.sign;
    const DoubleBackward d = double_backward(grads[0], ggg, grads[2], dz, x, g.value,
                                             saved[4].detach(), saved[5].detach(), true);
    at::Tensor d_dz = d.d_dy;
    if (grads[3].defined()) d_dz = d_dz + grads[3];  // dresidual = dz
    if (need[0]) out[0] = (mask.defined() ? d_dz * mask : d_dz).to(dy.scalar_type());
    if (need[1]) out[2] = d.d_x.to(x.scalar_type());
    if (need[2]) {
      at::Tensor dw = d.d_weight;
      if (g.sign.defined()) dw = dw * g.sign;
      out[3] = dw.to(weight.scalar_type());
    }
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_train_autograd(
    const at::Tensor& input, const c10::optional<at::Tensor>& residual,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    c10::optional<double> momentum, int64_t num_batches_tracked, double eps, c10::string_view act,
    double slope, bool abs_weight, double weight_eps, bool save_output) {
  auto out = TrainFunction::apply(input, residual, weight, bias, running_mean, running_var,
                                  momentum, num_batches_tracked, eps, act, slope, abs_weight,
                                  weight_eps, save_output);
  return {out[0], out[1], out[2]};
}

at::Tensor fused_eval_autograd(const at::Tensor& input, const c10::optional<at::Tensor>& residual,
                               const c10::optional<at::Tensor>& weight,
                               const c10::optional<at::Tensor>& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var,
                               double eps, c10::string_view act, double slope, bool abs_weight,
                               double weight_eps) {
  const bool grads = at::GradMode::is_enabled() && (input.requires_grad() || wants_grad(residual) ||
                                                    wants_grad(weight) || wants_grad(bias));
  if (!grads) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fused_batch_norm_eval(input, residual, weight, bias, running_mean, running_var, eps, act,
                                 slope, abs_weight, weight_eps);
  }
  const Activation a = cpu::activation_of(act);
  c10::optional<at::Tensor> w = weight;
  if (abs_weight)
    w = gamma_of(weight.value_or(at::Tensor()), input.size(1), running_mean.options(), true,
                 weight_eps)
            .value;
  at::Tensor z = batch_norm_eval(input, w, bias, running_mean, running_var, eps);
  if (given(residual)) z = z + *residual;
  if (a == Activation::relu) return at::relu(z);
  if (a == Activation::leaky_relu) return at::leaky_relu(z, slope);
  return z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& output, const c10::optional<at::Tensor>& input,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, c10::string_view act, double slope,
    bool abs_weight, double weight_eps, bool from_output, std::array<bool, 4> output_mask) {
  auto out = BackwardFunction::apply(grad_out, output, input, weight, bias, save_mean, save_invstd,
                                     act, slope, abs_weight, weight_eps, from_output, output_mask);
  for (size_t i = 0; i < 4; ++i)
    if (!output_mask[i]) out[i] = at::Tensor();
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace
}  // namespace autograd

TORCH_LIBRARY_IMPL(bnorm, Autograd, m) {
  m.impl("fused_batch_norm_train", &autograd::fused_train_autograd);
  m.impl("fused_batch_norm_eval", &autograd::fused_eval_autograd);
  m.impl("fused_batch_norm_backward", &autograd::fused_backward_autograd);
}

}  // namespace bnorm::ops
