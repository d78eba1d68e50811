// bnorm's fused batch norm as PyTorch operators (torch.ops.bnorm.fused_*):
// y = act(bn(x) + residual), bnorm/fused.hpp over tensors. Schemas in
// fused_batch_norm.cpp, CPU kernels in cpu/fused_batch_norm_kernel.cpp,
// autograd in autograd/fused_batch_norm_kernel.cpp. These functions call
// through the dispatcher. act: "identity", "relu" or "leaky_relu" (slope), bnorm::activation_name.
// abs_weight: InPlace-ABN's gamma_eff = |weight| + weight_eps.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace bnorm::ops {

// Training forward: (y, save_mean, save_invstd), the running statistics
// updated in place. save_output: autograd keeps y alone and its backward
// recovers x_hat from y (needs an invertible act and no residual).
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_batch_norm_train(
    const at::Tensor& input, const c10::optional<at::Tensor>& residual,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    c10::optional<double> momentum, int64_t num_batches_tracked, double eps, c10::string_view act,
    double slope, bool abs_weight, double weight_eps, bool save_output);

// Eval forward with the running statistics.
at::Tensor fused_batch_norm_eval(const at::Tensor& input, const c10::optional<at::Tensor>& residual,
                                 const c10::optional<at::Tensor>& weight,
                                 const c10::optional<at::Tensor>& bias,
                                 const at::Tensor& running_mean, const at::Tensor& running_var,
                                 double eps, c10::string_view act, double slope, bool abs_weight,
                                 double weight_eps);

// (dx, dweight, dbias, dresidual) of the training forward, each where
// output_mask asks; the mask of act is read off output. from_output: x_hat
// recovered from output (input unused).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_batch_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& output, const c10::optional<at::Tensor>& input,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, c10::string_view act, double slope,
    bool abs_weight, double weight_eps, bool from_output, std::array<bool, 4> output_mask);

}  // namespace bnorm::ops
