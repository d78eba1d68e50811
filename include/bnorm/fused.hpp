// Fused batch norm for the way networks use it: the activation and the
// residual addition that follow batch norm run in the same pass over memory,
// the backward recovers the activation's mask from the output, and the
// backward can start from the output alone (InPlace-ABN).
//
// For every channel k, with x_hat, mean and invstd as in bnorm.hpp:
//
//   z_i = gamma_k * x_hat_i + beta_k + r_i          (r: the residual, or 0)
//   y_i = act(z_i)
//
//   act = identity:    y = z
//   act = relu:        y = max(z, 0)
//   act = leaky_relu:  y = z if z > 0, else slope * z     (slope >= 0)
//
// Backward, given dy and y (the mask comes from y, so no extra state is
// kept):
//
//   dz_i      = dy_i * act'(z_i), with act'(z) = 1 where y_i > 0, else
//               0 (relu) or slope (leaky_relu); 1 everywhere for identity.
//               At z = 0 relu's gradient is 0, as torch's relu.
//   dresidual = dz
//   dbeta_k   = sum_i dz_i
//   dgamma_k  = sum_i dz_i * x_hat_i
//   dx_i      = gamma_k * invstd_k * (dz_i - dbeta_k/m - x_hat_i * dgamma_k/m)
//
// Backward from the output (Rota Bulo et al., "In-Place Activated BatchNorm
// for Memory-Optimized Training of DNNs", CVPR 2018): for an invertible act
// (identity, leaky_relu with slope > 0) and no residual, x_hat is recovered
// from y,
//
//   x_hat_i = (act^-1(y_i) - beta_k) / gamma_k,
//
// so x need not be kept and the forward may write y over x. Dividing by
// gamma is unbounded as gamma -> 0; Epilogue::abs_weight makes the layer use
// gamma_eff = |gamma| + weight_eps in place of gamma (forward and backward),
// as InPlace-ABN does. The consequences: the layer can no longer flip a
// channel's sign (gamma and -gamma give the same output), dweight is
// sign(gamma) * dL/dgamma_eff (sign(+-0) = +-1, so gamma = 0 still moves),
// and the recovered x_hat carries an error of about
// u * (|x_hat| + |beta| / gamma_eff) where u is the rounding unit of y's
// type (tests/test_fused.cpp checks this bound).
//
// Errors: as in bnorm.hpp, every argument is checked before anything is
// written, and std::invalid_argument names the argument and its value.
#pragma once

#include <cstdint>
#include <string_view>

#include "bnorm.hpp"

namespace bnorm {

// Activation (types.hpp) by the names the torch operators and Python use:
// "identity", "relu", "leaky_relu".
const char* activation_name(Activation act);
// The activation of that name; throws std::invalid_argument listing the names.
Activation activation_from_name(std::string_view name);

struct Epilogue {
  Activation act = Activation::relu;
  // leaky_relu's slope for z <= 0: finite and >= 0 (> 0 to invert it).
  double negative_slope = 0.01;
  // InPlace-ABN's gamma_eff = |gamma| + weight_eps in place of gamma.
  bool abs_weight = false;
  double weight_eps = 1e-5;
};

// The epilogue's own checks (a known act, a finite slope >= 0, weight_eps > 0
// with abs_weight); with from_output, also what fused_backward_from_output
// needs to recover x_hat from y: an invertible act (identity, or leaky_relu
// with slope > 0) and no residual (y cannot tell it apart from bn(x)). A
// caller that will take the backward from the output checks this before its
// forward. Throws std::invalid_argument naming `fn` and the argument.
void check_epilogue(const char* fn, const Epilogue& epilogue, bool from_output = false,
                    bool residual = false);

// Training forward: y = act(bn(x) + residual) with the batch statistics.
// Arguments as bnorm::forward_training; residual: numel values in x's layout,
// or null. y may be x (in place) or residual; no other overlap.
template <class T>
void fused_forward_training(const Shape& shape, const T* x, const T* residual,
                            const param_t<T>* weight, const param_t<T>* bias, T* y,
                            param_t<T>* save_mean, param_t<T>* save_invstd,
                            param_t<T>* running_mean, param_t<T>* running_var,
                            const Options& options, const Epilogue& epilogue);

// Inference forward: y = act(bn(x) + residual) with the running statistics.
template <class T>
void fused_forward_inference(const Shape& shape, const T* x, const T* residual,
                             const param_t<T>* weight, const param_t<T>* bias,
                             const param_t<T>* running_mean, const param_t<T>* running_var, T* y,
                             double eps, const Epilogue& epilogue);

// Training backward from the input: dy, y (the forward's output; may be null
// for identity), x, and the forward's save_mean and save_invstd. dx,
// dweight, dbias (c) and dresidual (numel) may each be null when not wanted.
// Either dx or dresidual may be dy (in place); no other overlap.
template <class T>
void fused_backward(const Shape& shape, const T* dy, const T* y, const T* x,
                    const param_t<T>* weight, const param_t<T>* save_mean,
                    const param_t<T>* save_invstd, T* dx, param_t<T>* dweight, param_t<T>* dbias,
                    T* dresidual, const Epilogue& epilogue);

// Training backward from the output (InPlace-ABN): needs only dy, y, weight,
// bias and save_invstd. The forward must have had no residual (y cannot tell
// r apart from bn(x)). Requires act = identity, or leaky_relu with
// negative_slope > 0; weight (when given) must be non-zero unless
// abs_weight is set. dx may be dy (in place).
template <class T>
void fused_backward_from_output(const Shape& shape, const T* dy, const T* y,
                                const param_t<T>* weight, const param_t<T>* bias,
                                const param_t<T>* save_invstd, T* dx, param_t<T>* dweight,
                                param_t<T>* dbias, const Epilogue& epilogue);

// Folds an eval-mode batch norm into the layer before it (convolution or
// linear, weight laid out [out_channels, fan_in], fan_in = product of the
// other dimensions), computed in double:
//
//   s_k        = gamma_k / sqrt(running_var_k + eps)
//   weight'_k. = weight_k. * s_k
//   bias'_k    = (bias_k - running_mean_k) * s_k + beta_k   (bias_k = 0 if null)
//
// so that conv'(x) = bn(conv(x)). bn_weight and bn_bias may be null (1 and
// 0). weight_out may be weight and bias_out may be bias (in place).
template <class T>
void fold_batch_norm(int64_t out_channels, int64_t fan_in, const T* weight, const T* bias,
                     const param_t<T>* bn_weight, const param_t<T>* bn_bias,
                     const param_t<T>* running_mean, const param_t<T>* running_var, double eps,
                     T* weight_out, T* bias_out);

}  // namespace bnorm
