// The NumPy module's docstrings (python/src/module.cpp).
#pragma once

namespace bnorm::python {

constexpr const char* module_doc = R"doc(
Batch normalization on the CPU with the semantics of torch.nn.functional.batch_norm.

Arrays are NumPy arrays of dtype float16, float32 or float64; every array of
a call must have the dtype of ``input``, except that float16 input takes
float32 per-channel arrays (weight, bias, running and saved statistics) and
returns float32 statistics and parameter gradients, as torch's
mixed-precision batch norm: float16 values are computed in float32 and
rounded once to float16. ``input`` has shape (N, C, *spatial), or is
stored as (N, *spatial, C) when ``channels_last=True``. A C-contiguous input
of the right dtype is read in place (no copy); anything else is copied once.
The GIL is released while the kernels run. Bad arguments raise ValueError
before anything is written, so running statistics are never half updated.
)doc";

constexpr const char* batch_norm_doc = R"doc(
Batch normalization forward, like torch.nn.functional.batch_norm.

Args:
    input: (N, C, *spatial) array, or (N, *spatial, C) with channels_last=True.
    running_mean, running_var: float arrays of shape (C,), or None. With
        training=True they are updated in place (they must be writeable,
        C-contiguous arrays of input's dtype); running_var tracks the
        unbiased variance. With training=False they are required and used to
        normalize.
    weight, bias: (C,) arrays, or None (gamma = 1, beta = 0).
    training: normalize with the batch statistics (needs N * prod(spatial) > 1)
        instead of the running ones.
    momentum: weight of this batch in the running statistics, in [0, 1];
        None selects the cumulative moving average, which then needs
        num_batches_tracked.
    eps: added to the variance before the square root, > 0.
    channels_last: input is stored as (N, *spatial, C).
    num_batches_tracked: keyword only; batches seen including this one (>= 1).
        Required when momentum is None and running statistics are updated.
    unbiased_running_var: keyword only. True (PyTorch, cuDNN): running_var
        averages the unbiased batch variance var * m / (m - 1); False (ONNX,
        Flax, Keras): the batch variance itself. Their momentum is
        1 - this momentum.

Returns:
    The output, a new C-contiguous array of input's shape and dtype.

Raises:
    ValueError: naming the bad argument and its value (the C++ message for
        the checks done by the core); nothing has been written.
)doc";

constexpr const char* batch_norm_train_doc = R"doc(
Training forward that also returns what batch_norm_backward needs.

Args:
    input: (N, C, *spatial) array, or (N, *spatial, C) with channels_last=True;
        needs N * prod(spatial) > 1.
    weight, bias: (C,) arrays, or None.
    running_mean, running_var: (C,) arrays updated in place, or None (both or
        neither).
    momentum, eps, channels_last, num_batches_tracked, unbiased_running_var:
        as in batch_norm.
    virtual_batch_size: keyword only; None, or ghost batch norm: consecutive
        groups of this many samples (>= 2; the last group may be smaller but
        must hold more than one value per channel), each normalized with its
        own statistics, the running statistics updated once per group in
        order (with momentum=None, group g counts as batch
        num_batches_tracked + g).

Returns:
    (output, save_mean, save_invstd): save_mean is the batch mean and
    save_invstd is 1 / sqrt(biased batch variance + eps), both of shape (C,),
    or (groups, C) with virtual_batch_size.

Raises:
    ValueError: as batch_norm; nothing has been written.
)doc";

constexpr const char* batch_norm_backward_doc = R"doc(
Gradients of the training forward, through the batch mean and variance.

Args:
    grad_output: dL/dy, of input's shape and dtype.
    input: the input of the forward, in the same layout.
    weight: the (C,) weight of the forward, or None.
    save_mean, save_invstd: what batch_norm_train returned.
    channels_last: input and grad_output are stored as (N, *spatial, C).
    virtual_batch_size: keyword only; the forward's, for ghost batch norm
        (then save_mean and save_invstd have shape (groups, C)).

Returns:
    (grad_input, grad_weight, grad_bias); grad_weight and grad_bias are None
    when weight is None.

Raises:
    ValueError: naming the bad argument and its value.
)doc";

constexpr const char* batch_norm_backward_eval_doc = R"doc(
Gradients of the inference forward (batch_norm with training=False).

The running statistics are constants there, so grad_input is
weight * grad_output / sqrt(running_var + eps), with no term through the
batch moments.

Args:
    grad_output: dL/dy, of input's shape and dtype.
    input: the input of the forward, in the same layout.
    weight: the (C,) weight of the forward, or None.
    running_mean, running_var: the (C,) statistics the forward used.
    eps: as in the forward, > 0.
    channels_last: input and grad_output are stored as (N, *spatial, C).

Returns:
    (grad_input, grad_weight, grad_bias); grad_weight and grad_bias are None
    when weight is None.

Raises:
    ValueError: naming the bad argument and its value.
)doc";

constexpr const char* batch_renorm_train_doc = R"doc(
Batch Renormalization training forward (Ioffe, 2017, Algorithm 1).

Per channel, with sigma = sqrt(running_var + eps) and sigma_B =
sqrt(batch var + eps), both taken before the update:
r = clip(sigma_B / sigma, 1/rmax, rmax), d = clip((mean_B - running_mean) /
sigma, -dmax, dmax), output = weight * ((x - mean_B) / sigma_B * r + d) + bias.
Then running_mean and running_var are updated in place as batch_norm does.
rmax=1, dmax=0 is batch norm exactly. Inference is batch_norm with
training=False.

Args:
    input: (N, C, *spatial) array, or (N, *spatial, C) with channels_last=True;
        needs N * prod(spatial) > 1.
    running_mean, running_var: (C,) arrays, required (they define r and d),
        updated in place.
    weight, bias: (C,) arrays, or None.
    rmax: >= 1. dmax: >= 0.
    momentum: weight of this batch in the running statistics, in [0, 1].
    eps, channels_last: as in batch_norm.
    unbiased_running_var: keyword only, as in batch_norm.

Returns:
    (output, save_mean, save_invstd, r, d), the last four of shape (C,).

Raises:
    ValueError: naming the bad argument and its value; nothing has been written.
)doc";

constexpr const char* batch_renorm_backward_doc = R"doc(
Gradients of batch_renorm_train with r and d held constant (stop-gradient).

Args:
    grad_output, input, weight, channels_last: as in batch_norm_backward.
    save_mean, save_invstd, r, d: what batch_renorm_train returned.

Returns:
    (grad_input, grad_weight, grad_bias); grad_weight is sum dy * x_hat with
    x_hat = (x - mean) * invstd * r + d. grad_weight and grad_bias are None
    when weight is None.

Raises:
    ValueError: naming the bad argument and its value.
)doc";

}  // namespace bnorm::python
