"""ONNX conformance: every BatchNormalization case of Debian's libonnx-testdata
(ONNX 1.12's backend node tests and the PyTorch-exported models), read with
python3-onnx, run through bnorm, compared with ONNX's expected outputs.

ONNX BatchNormalization-15 in training mode keeps the biased (1/m) variance
in the running statistics and states momentum as the decay of the old value:
bnorm's momentum is 1 - ONNX's, with unbiased_running_var=False.
"""

import glob
import os

import numpy as np
import pytest

import bnorm
import oracle

onnx = pytest.importorskip("onnx")  # python3-onnx, installed by scripts/install-deps.sh
from onnx import numpy_helper  # noqa: E402

DATA = "/usr/share/libonnx-testdata/data"


def _batchnorm_cases():
    """Every test directory whose model is one BatchNormalization node."""
    cases = []
    for model_path in sorted(glob.glob(os.path.join(DATA, "*", "*", "model.onnx"))):
        model = onnx.load(model_path)
        nodes = list(model.graph.node)
        if any(n.op_type == "BatchNormalization" for n in nodes):
            assert len(nodes) == 1, f"{model_path}: BatchNormalization among other nodes"
            for data_set in sorted(glob.glob(os.path.join(os.path.dirname(model_path),
                                                          "test_data_set_*"))):
                cases.append((model_path, data_set))
    return cases


CASES = _batchnorm_cases() if os.path.isdir(DATA) else []
EXPECTED_MODELS = {
    "node/test_batchnorm_epsilon", "node/test_batchnorm_epsilon_training_mode",
    "node/test_batchnorm_example", "node/test_batchnorm_example_training_mode",
    "pytorch-converted/test_BatchNorm1d_3d_input_eval", "pytorch-converted/test_BatchNorm2d_eval",
    "pytorch-converted/test_BatchNorm2d_momentum_eval", "pytorch-converted/test_BatchNorm3d_eval",
    "pytorch-converted/test_BatchNorm3d_momentum_eval",
}


def test_every_batchnorm_case_is_found():
    # libonnx-testdata is a dependency (scripts/install-deps.sh): its absence fails.
    assert os.path.isdir(DATA), f"{DATA} missing: apt-get install libonnx-testdata"
    found = {os.path.relpath(os.path.dirname(m), DATA) for m, _ in CASES}
    assert found == EXPECTED_MODELS
    assert len(CASES) == 9


def _load(data_set, prefix):
    paths = sorted(glob.glob(os.path.join(data_set, f"{prefix}_*.pb")),
                   key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    arrays = []
    for p in paths:
        t = onnx.TensorProto()
        with open(p, "rb") as f:
            t.ParseFromString(f.read())
        arrays.append(numpy_helper.to_array(t))
    return arrays


def _attributes(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("model_path, data_set", CASES,
                         ids=[os.path.relpath(os.path.dirname(m), DATA) for m, _ in CASES])
def test_onnx_case(model_path, data_set, channels_last):
    graph = onnx.load(model_path).graph
    node = graph.node[0]
    attrs = _attributes(node)
    eps = float(attrs.get("epsilon", 1e-5))
    onnx_momentum = float(attrs.get("momentum", 0.9))
    training = bool(attrs.get("training_mode", 0))
    # The node's inputs: the test data set's input_k.pb for the graph inputs
    # in order, the model's initializers (the PyTorch exports' parameters).
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    fed = [i.name for i in graph.input if i.name not in values]
    values.update(zip(fed, _load(data_set, "input")))
    x, scale, bias, mean, var = (values[name] for name in node.input)
    expected = _load(data_set, "output")
    assert len(expected) == len(node.output)
    dtype = x.dtype.type
    xin = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x
    if training:
        running_mean, running_var = mean.copy(), var.copy()
        y = bnorm.batch_norm(xin, running_mean, running_var, scale, bias, training=True,
                             momentum=1 - onnx_momentum, eps=eps, channels_last=channels_last,
                             unbiased_running_var=False)
    else:
        y = bnorm.batch_norm(xin, mean, var, scale, bias, training=False, eps=eps,
                             channels_last=channels_last)
    if channels_last:
        y = np.moveaxis(y, -1, 1)
    # Scales: the size of the terms each output is computed from.
    bmean, bvar, _ = oracle.batch_moments(x)
    nm, nv = (bmean, bvar) if training else (mean, var)
    inv = 1 / np.sqrt(np.asarray(nv, np.float64) + eps)
    x_hat = (np.abs(x).max() + np.abs(nm).max()) * inv.max()
    y_scale = float(np.abs(scale).max() * x_hat + np.abs(bias).max())
    oracle.check("onnx Y", dtype, y, expected[0], y_scale)
    if training:
        oracle.check("onnx running_mean", dtype, running_mean, expected[1],
                     float(np.abs(mean).max() + np.abs(bmean).max()))
        oracle.check("onnx running_var", dtype, running_var, expected[2],
                     float(np.abs(var).max() + np.abs(bvar).max()))
        # PyTorch's convention would miss ONNX's running_var: the test can fail.
        rm2, rv2 = mean.copy(), var.copy()
        bnorm.batch_norm(x, rm2, rv2, scale, bias, training=True, momentum=1 - onnx_momentum,
                         eps=eps, unbiased_running_var=True)
        assert np.max(np.abs(rv2 - expected[2])) > 1e-3 * np.abs(expected[2]).max()
