"""ONNX export: bnorm's op in eval mode becomes a standard BatchNormalization node."""

import torch
from torch.onnx import symbolic_helper

_ONNX_TYPES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16,
               "BFloat16": torch.bfloat16}


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "b", "v", "i", "f")
def _batch_norm(g, input, weight, bias, running_mean, running_var, training, momentum,
                num_batches_tracked, eps):
    if training:
        raise RuntimeError(
            "bnorm.torch: ONNX export needs the model in eval mode with running statistics "
            "(model.eval(), track_running_stats=True); a training-mode batch norm has no "
            "standard ONNX form with PyTorch's running-variance convention")
    if symbolic_helper._is_none(weight) or symbolic_helper._is_none(bias):
        sizes = symbolic_helper._get_tensor_sizes(running_mean)
        channels = sizes[0] if sizes else None
        if channels is None:
            raise RuntimeError("bnorm.torch: ONNX export of a layer without weight or bias "
                               "needs the running statistics' size")
        dtype = _ONNX_TYPES.get(running_mean.type().scalarType(), torch.float32)
        if symbolic_helper._is_none(weight):
            weight = g.op("Constant", value_t=torch.ones(channels, dtype=dtype))
        if symbolic_helper._is_none(bias):
            bias = g.op("Constant", value_t=torch.zeros(channels, dtype=dtype))
    # ONNX's momentum is the decay of the running statistics: 1 - torch's.
    # Eval mode never reads it; momentum None (the cumulative average) has no
    # ONNX form and takes ONNX's default.
    decay = (0.9 if symbolic_helper._is_none(momentum)
             else 1.0 - float(symbolic_helper._maybe_get_const(momentum, "f")))
    return g.op("BatchNormalization", input, weight, bias, running_mean, running_var,
                epsilon_f=eps, momentum_f=decay)


for _opset in range(9, 18):
    torch.onnx.register_custom_op_symbolic("bnorm::batch_norm", _batch_norm, _opset)
