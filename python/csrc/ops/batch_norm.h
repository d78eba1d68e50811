// bnorm's batch normalization as PyTorch operators (torch.ops.bnorm.*).
//
// The schemas live in batch_norm.cpp, the CPU kernels (bnorm's own) in
// cpu/batch_norm_kernel.cpp, the autograd formulas in
// autograd/batch_norm_kernel.cpp, as torchvision lays out its C++ ops. These
// functions call through the dispatcher, so autograd, tracing and TorchScript
// see them like any ATen operator. Semantics are those of
// torch.nn.functional.batch_norm; see include/bnorm/bnorm.hpp for the math.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace bnorm::ops {

// y = weight * (x - mean) * invstd + bias with the batch (training) or the
// running (eval) statistics; in training the running statistics, when given,
// are updated in place with the weight `momentum` for this batch.
at::Tensor batch_norm(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                      const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& running_mean,
                      const c10::optional<at::Tensor>& running_var, bool training,
                      c10::optional<double> momentum, int64_t num_batches_tracked, double eps);

// Training forward: (y, save_mean, save_invstd).
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, c10::optional<double> momentum,
    int64_t num_batches_tracked, double eps);

// Eval forward with the running statistics.
at::Tensor batch_norm_eval(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                           const at::Tensor& running_var, double eps);

// (grad_input, grad_weight, grad_bias), each only where output_mask asks.
// train: through the batch statistics save_mean/save_invstd; otherwise with
// running_mean and 1/sqrt(running_var + eps) held constant.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    const c10::optional<at::Tensor>& save_mean, const c10::optional<at::Tensor>& save_invstd,
    bool train, double eps, std::array<bool, 3> output_mask);

}  // namespace bnorm::ops
