// bnorm::reference: the double-precision oracle every fast path is tested
// against, written to be read next to the math rather than to be fast.
//
// Per channel, over the m values x_1..x_m of one channel:
//   staged        the computational graph of the layer, one primitive node at
//                 a time, forward and then backward in reverse node order;
//   closed_form   the paper's equations for dL/dvar, dL/dmu and dL/dx, and
//                 the compact form dx = gamma*invstd*(dy - mean(dy) -
//                 x_hat*mean(dy*x_hat));
//   frozen_moments the backward of a layer that wrongly treats mu and var as
//                 constants: dx = gamma*invstd*dy.
// Whole tensors (any Shape) are handled by gathering each channel's values.
#pragma once

#include <bnorm/bnorm.hpp>
#include <span>
#include <string>
#include <vector>

namespace bnorm::reference {

// ---- one channel: the staged computational graph --------------------------

// The forward pass, every node's output kept (names follow the graph).
struct StagedForward {
  double eps = 0, gamma = 1, beta = 0;
  std::vector<double> x;       // input
  double mu = 0;               // node 1, mean:      mu = (1/m) sum x_i
  std::vector<double> xmu;     // node 2, subtract:  xmu_i = x_i - mu
  std::vector<double> sq;      // node 3, square:    sq_i = xmu_i^2
  double var = 0;              // node 4, variance:  var = (1/m) sum sq_i
  double vareps = 0;           // node 5, add eps:   vareps = var + eps
  double sqrtvar = 0;          // node 6, sqrt:      sqrtvar = sqrt(vareps)
  double ivar = 0;             // node 7, invert:    ivar = 1 / sqrtvar
  std::vector<double> xhat;    // node 8, multiply:  xhat_i = xmu_i * ivar
  std::vector<double> gammax;  // node 9, scale:     gammax_i = gamma * xhat_i
  std::vector<double> y;       // node 10, shift:    y_i = gammax_i + beta
};

// The backward pass: the gradient of the loss flowing into every node.
struct StagedBackward {
  std::vector<double> dy;
  double dbeta = 0;                 // shift
  std::vector<double> dgammax;      // shift
  double dgamma = 0;                // scale
  std::vector<double> dxhat;        // scale
  std::vector<double> dxmu_direct;  // multiply, the path xhat <- xmu
  double divar = 0;                 // multiply, the path xhat <- ivar
  double dsqrtvar = 0;              // invert
  double dvareps = 0;               // sqrt
  double dvar = 0;                  // add eps
  std::vector<double> dsq;          // variance
  std::vector<double> dxmu_var;     // square: the path xmu <- sq <- var
  std::vector<double> dxmu;         // both paths into xmu
  double dmu = 0;                   // subtract
  std::vector<double> dx_direct;    // subtract, the path x -> xmu
  std::vector<double> dx;           // mean adds (1/m) dmu to every x_i
};

StagedForward staged_forward(std::span<const double> x, double gamma, double beta, double eps);
StagedBackward staged_backward(const StagedForward& f, std::span<const double> dy);

// ---- one channel: closed forms --------------------------------------------

struct ClosedForm {
  std::vector<double> dxhat;  // dL/dx_hat_i = dy_i * gamma
  double dvar = 0;            // sum_i dxhat_i (x_i - mu) * (-1/2) (var + eps)^(-3/2)
  double dmu = 0;          // sum_i dxhat_i * (-1/sqrt(var + eps)) + dvar * sum_i -2 (x_i - mu) / m
  std::vector<double> dx;  // dxhat_i / sqrt(var + eps) + dvar * 2 (x_i - mu) / m + dmu / m
  std::vector<double> dx_compact;  // gamma * invstd * (dy_i - mean(dy) - xhat_i * mean(dy * xhat))
  double dgamma = 0;               // sum_i dy_i * xhat_i
  double dbeta = 0;                // sum_i dy_i
};

ClosedForm closed_form(std::span<const double> x, std::span<const double> dy, double gamma,
                       double eps);

// ---- whole tensors ---------------------------------------------------------

// weight/bias: c values, or empty for gamma = 1, beta = 0.
struct Forward {
  std::vector<double> y;
  std::vector<double> mean, var, invstd;  // var is the biased (1/m) variance
};
Forward forward_training(const Shape& shape, std::span<const double> x,
                         std::span<const double> weight, std::span<const double> bias, double eps);
std::vector<double> forward_inference(const Shape& shape, std::span<const double> x,
                                      std::span<const double> weight, std::span<const double> bias,
                                      std::span<const double> running_mean,
                                      std::span<const double> running_var, double eps);

enum class Method { staged, closed_form, compact, frozen_moments };
const char* to_string(Method method);

struct Gradients {
  std::vector<double> dx, dweight, dbias;
};
// Training-mode backward, computed with the chosen method.
Gradients backward(Method method, const Shape& shape, std::span<const double> dy,
                   std::span<const double> x, std::span<const double> weight, double eps);

// Central finite differences of L = sum_i dy_i * y_i(x, weight, bias), the
// training forward above. h is the step (relative to each value's size).
Gradients finite_differences(const Shape& shape, std::span<const double> dy,
                             std::span<const double> x, std::span<const double> weight,
                             std::span<const double> bias, double eps, double h = 1e-5);

// ---- Batch Renormalization (Ioffe, 2017, Algorithm 1), whole tensors ------

// The training forward as Algorithm 1 writes it, per channel, with the moving
// mean mu = running_mean and moving std sigma = sqrt(running_var + eps):
//   mu_B = (1/m) sum x_i,  sigma_B = sqrt((1/m) sum (x_i - mu_B)^2 + eps)
//   r = stop_gradient(clip(sigma_B / sigma, 1/rmax, rmax))
//   d = stop_gradient(clip((mu_B - mu) / sigma, -dmax, dmax))
//   x_hat_i = (x_i - mu_B) / sigma_B * r + d,   y_i = gamma * x_hat_i + beta
// and the running statistics updated as batch norm's (not the paper's update
// of sigma itself): running_mean += momentum * (mu_B - running_mean),
// running_var += momentum * (v - running_var) with v the unbiased
// (unbiased = true) or biased batch variance.
struct RenormForward {
  std::vector<double> y;
  std::vector<double> mean, var, invstd, r, d;    // per channel; var biased
  std::vector<double> running_mean, running_var;  // after the update
};
RenormForward batch_renorm_forward_training(const Shape& shape, std::span<const double> x,
                                            std::span<const double> weight,
                                            std::span<const double> bias,
                                            std::span<const double> running_mean,
                                            std::span<const double> running_var, double rmax,
                                            double dmax, double momentum, double eps,
                                            bool unbiased);

// The paper's backward with r and d constants:
//   dL/dx_hat_i = dy_i * gamma
//   dL/dsigma_B = sum_i dL/dx_hat_i * (x_i - mu_B) * (-r / sigma_B^2)
//   dL/dmu_B    = sum_i dL/dx_hat_i * (-r / sigma_B)
//   dL/dx_i     = dL/dx_hat_i * r / sigma_B + dL/dsigma_B * (x_i - mu_B) / (m * sigma_B)
//                 + dL/dmu_B / m
//   dL/dgamma   = sum_i dy_i * x_hat_i,   dL/dbeta = sum_i dy_i
Gradients batch_renorm_backward(const Shape& shape, std::span<const double> dy,
                                std::span<const double> x, std::span<const double> weight,
                                std::span<const double> r, std::span<const double> d, double eps);

// Central finite differences of L = sum_i dy_i * y_i with r and d held at
// the given values (the stop-gradient), mu_B and sigma_B recomputed.
Gradients batch_renorm_finite_differences(const Shape& shape, std::span<const double> dy,
                                          std::span<const double> x, std::span<const double> weight,
                                          std::span<const double> bias, std::span<const double> r,
                                          std::span<const double> d, double eps, double h = 1e-5);

// The m values of channel k, in order of (sample, position).
std::vector<double> gather_channel(const Shape& shape, std::span<const double> t, int64_t k);
void scatter_channel(const Shape& shape, std::span<const double> values, int64_t k,
                     std::span<double> t);

// Error measures used by the tests and the CLI; NaN where a and b disagree on
// NaN. max_i |a_i - b_i| / max_i |b_i|:
double max_scaled_error(std::span<const double> a, std::span<const double> b);
// max_i |got_i - want_i| / max_i |weight_k * invstd_k * dy_i|. dx is the
// difference of terms of that size, which cancel almost exactly when m is
// tiny (m = 2 leaves only an O(eps) remainder), so dx is no yardstick for
// its own error.
double dx_error(const Shape& shape, std::span<const double> got, std::span<const double> want,
                std::span<const double> dy, std::span<const double> weight,
                std::span<const double> invstd);

}  // namespace bnorm::reference
