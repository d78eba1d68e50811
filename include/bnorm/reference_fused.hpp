// bnorm::reference for the fused layer (bnorm/fused.hpp): the unfused
// composition act(batch_norm(x) + r) in double, built on the reference batch
// norm, with the backward taken node by node in reverse (act, add, batch
// norm), and central finite differences of the composition.
#pragma once

#include <bnorm/fused.hpp>
#include <bnorm/reference.hpp>
#include <span>
#include <vector>

namespace bnorm::reference {

// act(z) and act'(z) (relu'(0) = 0, leaky_relu'(0) = slope, as torch).
double activation(const Epilogue& e, double z);
double activation_derivative(const Epilogue& e, double z);

// gamma as the layer uses it (|gamma| + weight_eps with abs_weight).
std::vector<double> effective_weight(std::span<const double> weight, int64_t c, const Epilogue& e);

struct FusedForward {
  std::vector<double> z, y;               // z = bn(x) + r, y = act(z)
  std::vector<double> mean, var, invstd;  // batch statistics
};
// residual, weight, bias may be empty (0, 1, 0).
FusedForward fused_forward_training(const Shape& shape, std::span<const double> x,
                                    std::span<const double> residual,
                                    std::span<const double> weight, std::span<const double> bias,
                                    double eps, const Epilogue& e);
std::vector<double> fused_forward_inference(const Shape& shape, std::span<const double> x,
                                            std::span<const double> residual,
                                            std::span<const double> weight,
                                            std::span<const double> bias,
                                            std::span<const double> running_mean,
                                            std::span<const double> running_var, double eps,
                                            const Epilogue& e);

struct FusedGradients {
  std::vector<double> dx, dweight, dbias, dresidual;
};
// dz = dy * act'(z), dresidual = dz, then the batch-norm backward (compact
// form) with dz. mask_y: when not empty, act' is read off these outputs
// (y > 0) instead of z, to replay the branches a tested kernel took.
FusedGradients fused_backward(const Shape& shape, std::span<const double> dy,
                              std::span<const double> x, std::span<const double> residual,
                              std::span<const double> weight, std::span<const double> bias,
                              double eps, const Epilogue& e, std::span<const double> mask_y = {});

// Central differences of L = sum_i dy_i * y_i(x, residual, weight, bias)
// through fused_forward_training; h relative to each value's size.
FusedGradients fused_finite_differences(const Shape& shape, std::span<const double> dy,
                                        std::span<const double> x, std::span<const double> residual,
                                        std::span<const double> weight,
                                        std::span<const double> bias, double eps, const Epilogue& e,
                                        double h = 1e-6);

}  // namespace bnorm::reference
