// Shared by the autograd kernels of torch.ops.bnorm.* (autograd/*.cpp):
// optional-argument helpers and batch norm's analytic double backward, which
// the fused ops reuse on dz = dy * act'(z).
#pragma once

#include <ATen/ATen.h>

namespace bnorm::ops::autograd {

inline bool given(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }
inline bool wants_grad(const c10::optional<at::Tensor>& t) {
  return given(t) && t->requires_grad();
}

// The in-place update of the running statistics bypasses ADInplaceOrView:
// bump their versions so that saved copies of them notice.
inline void mark_written(const c10::optional<at::Tensor>& t) {
  if (given(t)) t->unsafeGetTensorImpl()->bump_version();
}

// Gradients of a loss L2 with respect to the inputs (dy, x, gamma) of batch
// norm's backward, given its gradients (ggx, ggg, ggb) with respect to that
// backward's outputs (dx, dgamma, dbeta); each of ggx, ggg, ggb may be
// undefined (zero). train: through the batch statistics mean and invstd
// (their dependence on x is part of the formula); otherwise mean and invstd
// are constants. d_weight is undefined when weight is (gamma = 1).
struct DoubleBackward {
  at::Tensor d_dy, d_x, d_weight;
};
DoubleBackward double_backward(const at::Tensor& ggx, const at::Tensor& ggg, const at::Tensor& ggb,
                               const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& mean, const at::Tensor& invstd, bool train);

}  // namespace bnorm::ops::autograd
