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
