// Autograd kernels of torch.ops.bnorm.*: the forward ops record a node whose
// backward calls bnorm.batch_norm_backward through the dispatcher, and that
// op has its own node whose backward is the analytic double backward,
// written with differentiable ATen ops.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../batch_norm.h"
#include "autograd.h"

namespace bnorm::ops {
namespace autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// Which of a node's three differentiable inputs asked for a gradient.
void save_mask(AutogradContext* ctx, bool first, bool second, bool third) {
  ctx->saved_data["need0"] = first;
  ctx->saved_data["need1"] = second;
  ctx->saved_data["need2"] = third;
}
std::array<bool, 3> saved_mask(AutogradContext* ctx) {
  return {ctx->saved_data["need0"].toBool(), ctx->saved_data["need1"].toBool(),
          ctx->saved_data["need2"].toBool()};
}

class TrainFunction : public torch::autograd::Function<TrainFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& input,
                               const c10::optional<Variable>& weight,
                               const c10::optional<Variable>& bias,
                               const c10::optional<Variable>& running_mean,
                               const c10::optional<Variable>& running_var,
                               c10::optional<double> momentum, int64_t num_batches_tracked,
                               double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, save_mean, save_invstd] = batch_norm_train(
        input, weight, bias, running_mean, running_var, momentum, num_batches_tracked, eps);
    mark_written(running_mean);
    mark_written(running_var);
    ctx->save_for_backward({input, weight.value_or(at::Tensor()), save_mean, save_invstd});
    ctx->saved_data["eps"] = eps;
    save_mask(ctx, input.requires_grad(), wants_grad(weight), wants_grad(bias));
    ctx->mark_non_differentiable({save_mean, save_invstd});
    return {y, save_mean, save_invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = saved_mask(ctx);
    variable_list out(8);  // one per argument of forward
    if (!grads[0].defined()) return out;
    auto [dx, dweight, dbias] = batch_norm_backward(
        grads[0], saved[0], saved[1], c10::nullopt, c10::nullopt, saved[2], saved[3],
        /*train=*/true, ctx->saved_data["eps"].toDouble(), mask);
    out[0] = dx;
    out[1] = dweight;
    out[2] = dbias;
    return out;
  }
};

class EvalFunction : public torch::autograd::Function<EvalFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& input,
                               const c10::optional<Variable>& weight,
                               const c10::optional<Variable>& bias, const Variable& running_mean,
                               const Variable& running_var, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = batch_norm_eval(input, weight, bias, running_mean, running_var, eps);
    // Saved as they are, version-checked: a training step between this
    // forward and its backward is reported, as torch does.
    ctx->save_for_backward({input, weight.value_or(at::Tensor()), running_mean, running_var});
    ctx->saved_data["eps"] = eps;
    save_mask(ctx, input.requires_grad(), wants_grad(weight), wants_grad(bias));
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = saved_mask(ctx);
    variable_list out(6);
    if (!grads[0].defined()) return out;
    auto [dx, dweight, dbias] = batch_norm_backward(
        grads[0], saved[0], saved[1], saved[2], saved[3], c10::nullopt, c10::nullopt,
        /*train=*/false, ctx->saved_data["eps"].toDouble(), mask);
    out[0] = dx;
    out[1] = dweight;
    out[2] = dbias;
    return out;
  }
};

// Per-channel helpers over (N, C, *spatial) tensors of any memory format.
std::vector<int64_t> reduce_dims(const at::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}
at::Tensor per_channel(const at::Tensor& v, const at::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[1] = x.size(1);
  return v.reshape(shape);
}

}  // namespace

// Double backward. The backward op maps (dy, x, gamma) to (dx, dgamma,
// dbeta); given the gradients (ggx, ggg, ggb) of a loss L2 with respect to
// those, this returns dL2/d(dy), dL2/dx and dL2/dgamma. Per channel, with m
// values, s = invstd, x_hat = (x - mean) s, a = mean(dy), b = mean(dy x_hat):
//
//   training:  dx = g s (dy - a - x_hat b), dgamma = m b, dbeta = m a
//     dL2/d(dy) = g s (ggx - mean(ggx) - x_hat mean(ggx x_hat)) + ggg x_hat + ggb
//     dL2/dg    = s sum ggx (dy - a - x_hat b)
//     dL2/dx    : L2 as a function of x_hat and s, where x_hat depends on x as
//                 dx_hat_i/dx_j = s (delta_ij - 1/m - x_hat_i x_hat_j / m) and
//                 ds/dx_j = -s^2 x_hat_j / m. With P = sum ggx x_hat,
//                 Q = sum dy x_hat, C = sum ggx (dy - a):
//       G_j    = dL2/dx_hat_j = -g s (ggx_j Q + P dy_j) / m + ggg dy_j
//       L2_s   = dL2/ds      = g (C - P Q / m)
//       dL2/dx = s (G - mean(G) - x_hat mean(G x_hat)) - L2_s s^2 x_hat / m
//
//   eval (mean and s constants): dx = g s dy
//     dL2/d(dy) = g s ggx + ggg x_hat + ggb,  dL2/dg = s sum ggx dy,
//     dL2/dx = ggg s dy
DoubleBackward double_backward(const at::Tensor& ggx, const at::Tensor& ggg, const at::Tensor& ggb,
                               const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& mean_in, const at::Tensor& invstd_in, bool train) {
  const auto dims = reduce_dims(x);
  const double m = x.numel() == 0 ? 1.0 : double(x.numel() / x.size(1));
  const at::Tensor mean = per_channel(mean_in, x), s = per_channel(invstd_in, x);
  const at::Tensor g = weight.defined() ? per_channel(weight, x) : at::ones_like(s);
  const at::Tensor x_hat = (x - mean) * s;
  auto sum = [&](const at::Tensor& t) { return t.sum(dims, /*keepdim=*/true); };
  DoubleBackward out;
  if (!train) {
    at::Tensor d_dy = at::zeros_like(dy);
    if (ggx.defined()) d_dy = d_dy + g * s * ggx;
    if (ggg.defined()) d_dy = d_dy + per_channel(ggg, x) * x_hat;
    if (ggb.defined()) d_dy = d_dy + per_channel(ggb, x);
    out.d_dy = d_dy;
    out.d_x = ggg.defined() ? per_channel(ggg, x) * s * dy : at::zeros_like(x);
    if (weight.defined())
      out.d_weight =
          ggx.defined() ? (s * sum(ggx * dy)).reshape({x.size(1)}) : at::zeros_like(weight);
    return out;
  }
  const at::Tensor a = sum(dy) / m;
  const at::Tensor Q = sum(dy * x_hat);
  const at::Tensor b = Q / m;
  at::Tensor d_dy = at::zeros_like(dy);
  at::Tensor G = at::zeros_like(x);
  at::Tensor L2_s = at::zeros_like(s);
  if (ggx.defined()) {
    const at::Tensor P = sum(ggx * x_hat);
    d_dy = d_dy + g * s * (ggx - sum(ggx) / m - x_hat * (P / m));
    G = G - g * s * (ggx * Q + P * dy) / m;
    L2_s = g * (sum(ggx * (dy - a)) - P * Q / m);
  }
  if (ggg.defined()) {
    d_dy = d_dy + per_channel(ggg, x) * x_hat;
    G = G + per_channel(ggg, x) * dy;
  }
  if (ggb.defined()) d_dy = d_dy + per_channel(ggb, x);
  out.d_dy = d_dy;
  out.d_x = s * (G - sum(G) / m - x_hat * (sum(G * x_hat) / m)) - L2_s * s * s * x_hat / m;
  if (weight.defined())
    out.d_weight = ggx.defined() ? (s * sum(ggx * (dy - a - x_hat * b))).reshape({x.size(1)})
                                 : at::zeros_like(weight);
  return out;
}

namespace {

class BackwardFunction : public torch::autograd::Function<BackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& grad_out,
                               const Variable& input, const c10::optional<Variable>& weight,
                               const c10::optional<Variable>& running_mean,
                               const c10::optional<Variable>& running_var,
                               const c10::optional<Variable>& save_mean,
                               const c10::optional<Variable>& save_invstd, bool train, double eps,
                               std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dx, dweight, dbias] =
        batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean,
                            save_invstd, train, eps, output_mask);
    at::Tensor mean, invstd;
    if (train) {
      mean = *save_mean;
      invstd = *save_invstd;
    } else {
      mean = *running_mean;
      invstd = (*running_var + eps).rsqrt();
    }
    ctx->save_for_backward({grad_out, input, weight.value_or(at::Tensor()), mean, invstd});
    ctx->saved_data["train"] = train;
    save_mask(ctx, grad_out.requires_grad(), input.requires_grad(), wants_grad(weight));
    ctx->saved_data["outputs"] = c10::List<bool>({output_mask[0], output_mask[1], output_mask[2]});
    ctx->set_materialize_grads(false);
    // A node's outputs must be defined: gradients output_mask did not ask
    // for travel as empty tensors and are dropped again by the caller.
    auto placeholder = [&](const at::Tensor& t) {
      return t.defined() ? t : at::empty({0}, input.options());
    };
    return {placeholder(dx), placeholder(dweight), placeholder(dbias)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = saved_mask(ctx);
    variable_list out(10);
    // Gradients reaching the placeholders of outputs nobody asked for are
    // not gradients of anything.
    const auto outputs = ctx->saved_data["outputs"].toBoolList();
    for (size_t i = 0; i < 3; ++i)
      if (!outputs[i]) grads[i] = at::Tensor();
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined()) return out;
    // The saved statistics are constants here; their dependence on x in
    // training is part of the formula.
    const DoubleBackward d =
        double_backward(grads[0], grads[1], grads[2], saved[0], saved[1], saved[2],
                        saved[3].detach(), saved[4].detach(), ctx->saved_data["train"].toBool());
    // Each gradient in its input's dtype (the formula promotes 16-bit
    // activations to the statistics' float32).
    if (mask[0]) out[0] = d.d_dy.to(saved[0].scalar_type());
    if (mask[1]) out[1] = d.d_x.to(saved[1].scalar_type());
    if (mask[2]) out[2] = d.d_weight.to(saved[2].scalar_type());
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train_autograd(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, c10::optional<double> momentum,
    int64_t num_batches_tracked, double eps) {
  auto out = TrainFunction::apply(input, weight, bias, running_mean, running_var, momentum,
                                  num_batches_tracked, eps);
  return {out[0], out[1], out[2]};
}

at::Tensor batch_norm_eval_autograd(const at::Tensor& input,
                                    const c10::optional<at::Tensor>& weight,
                                    const c10::optional<at::Tensor>& bias,
                                    const at::Tensor& running_mean, const at::Tensor& running_var,
                                    double eps) {
  return EvalFunction::apply(input, weight, bias, running_mean, running_var, eps)[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    const c10::optional<at::Tensor>& save_mean, const c10::optional<at::Tensor>& save_invstd,
    bool train, double eps, std::array<bool, 3> output_mask) {
  auto out = BackwardFunction::apply(grad_out, input, weight, running_mean, running_var, save_mean,
                                     save_invstd, train, eps, output_mask);
  for (size_t i = 0; i < 3; ++i)
    if (!output_mask[i]) out[i] = at::Tensor();
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace autograd

TORCH_LIBRARY_IMPL(bnorm, Autograd, m) {
  using namespace autograd;
  m.impl("batch_norm_train", &batch_norm_train_autograd);
  m.impl("batch_norm_eval", &batch_norm_eval_autograd);
  m.impl("batch_norm_backward", &batch_norm_backward_autograd);
}

}  // namespace bnorm::ops
