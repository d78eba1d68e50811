"""TorchScript and ONNX export of models with bnorm.torch inside.

- torch.jit.script of a converted torchvision ResNet-18: the same outputs
  (and in training the same running statistics) as eager;
- torch.jit.trace, saved with torch.jit.save and loaded in a fresh process
  that only loads bnorm's operator library, run on another batch than the
  traced one: eager's outputs and running statistics;
- torch.onnx.export in eval mode: standard ONNX only (no custom domain, no
  PythonOp), checked by onnx.checker, and its outputs, computed by a small
  evaluator of the ONNX operators over torch.nn.functional, equal eager's.
"""

import copy
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
import torch.nn.functional as F
import torchvision

import bnorm.torch as bt


def resnet(memory_format=torch.contiguous_format):
    torch.manual_seed(0)
    model = bt.convert(torchvision.models.resnet18(num_classes=10))
    # Non-trivial running statistics and affine parameters.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, bt.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
    return model.to(memory_format=memory_format)


def batch(seed, memory_format=torch.contiguous_format):
    return torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(seed)).to(
        memory_format=memory_format)


def running_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_script_matches_eager(train):
    eager = resnet().train(train)
    scripted = torch.jit.script(copy.deepcopy(eager))
    x = batch(1)
    torch.testing.assert_close(scripted(x), eager(x), rtol=1e-5, atol=1e-5)
    for (k, a), b in zip(running_stats(scripted).items(), running_stats(eager).values()):
        torch.testing.assert_close(a, b, msg=k)
    graph = str(scripted.bn1.graph)
    assert "bnorm::batch_norm" in graph, graph


def test_script_of_the_module_alone_and_its_errors():
    for cls, rank in ((bt.BatchNorm1d, 3), (bt.BatchNorm2d, 4), (bt.BatchNorm3d, 5)):
        for kw in ({}, {"momentum": None}, {"affine": False, "track_running_stats": False}):
            m = cls(3, **kw)
            s = torch.jit.script(cls(3, **kw))
            x = torch.randn(4, 3, *([2] * (rank - 2)))
            torch.testing.assert_close(s(x), m(x))
            torch.testing.assert_close(s.state_dict(), m.state_dict())
        with pytest.raises(Exception, match="expected"):
            s(torch.randn(4, 3, 2, 2, 2, 2))


TRACE_CHECK = textwrap.dedent("""
    import sys, torch
    torch.ops.load_library(sys.argv[1])
    model = torch.jit.load(sys.argv[2])
    x = torch.load(sys.argv[3])
    out = model(x)
    stats = {k: v for k, v in model.state_dict().items() if "running" in k}
    torch.save((out, stats), sys.argv[4])
""")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_saved_trace_runs_in_a_fresh_process(tmp_path, train, memory_format):
    eager = resnet(memory_format).train(train)
    traced = torch.jit.trace(copy.deepcopy(eager), batch(1, memory_format), check_trace=False)
    path = tmp_path / "model.pt"
    torch.jit.save(traced, str(path))
    x = batch(2, memory_format)  # not the traced batch
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", TRACE_CHECK, bt.library_path, str(path),
                    str(tmp_path / "x.pt"), str(tmp_path / "out.pt")], check=True,
                   env={**os.environ, "PYTHONPATH": ""})
    out, stats = torch.load(tmp_path / "out.pt")
    # The traced model saw one batch before this one; so does the eager copy.
    eager(batch(1, memory_format))
    expected = eager(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for k, v in running_stats(eager).items():
        torch.testing.assert_close(stats[k], v, msg=k)


# --------------------------------------------------------------------- ONNX

def _attributes(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(attrs, rank):
    pads = attrs.get("pads", [0] * (2 * rank))
    assert pads[:rank] == pads[rank:], "asymmetric padding"
    return list(pads[:rank])


def evaluate_onnx(model, inputs):
    """Runs an ONNX graph with torch.nn.functional for the operators these models use.

    BatchNormalization is computed from its definition in NumPy's float64,
    not by bnorm or torch's batch norm.
    """
    values = {init.name: torch.from_numpy(onnx.numpy_helper.to_array(init).copy())
              for init in model.graph.initializer}
    values.update(inputs)
    for node in model.graph.node:
        a = _attributes(node)
        x = [values[name] if name else None for name in node.input]
        op = node.op_type
        if op == "Conv":
            rank = x[0].dim() - 2
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
            out = conv(x[0], x[1], x[2] if len(x) > 2 else None, stride=a.get("strides", 1),
                       padding=_pads(a, rank), dilation=a.get("dilations", 1),
                       groups=a.get("group", 1))
        elif op == "BatchNormalization":
            data, scale, bias, mean, var = (t.double().numpy() for t in x[:5])
            shape = (1, -1) + (1,) * (data.ndim - 2)
            y = ((data - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + a["epsilon"])
                 * scale.reshape(shape) + bias.reshape(shape))
            out = torch.from_numpy(y).to(x[0].dtype)
        elif op == "Relu":
            out = F.relu(x[0])
        elif op == "Add":
            out = x[0] + x[1]
        elif op == "MaxPool":
            rank = x[0].dim() - 2
            out = F.max_pool2d(x[0], a["kernel_shape"], a.get("strides"), _pads(a, rank),
                               ceil_mode=bool(a.get("ceil_mode", 0)))
        elif op == "GlobalAveragePool":
            out = x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)
        elif op == "Flatten":
            out = x[0].flatten(a.get("axis", 1))
        elif op == "Gemm":
            b = x[1].t() if a.get("transB", 0) else x[1]
            out = a.get("alpha", 1.0) * x[0] @ b + a.get("beta", 1.0) * x[2]
        elif op == "Constant":
            out = torch.from_numpy(onnx.numpy_helper.to_array(a["value"]).copy())
        else:
            raise NotImplementedError(f"evaluator has no {op}")
        values[node.output[0]] = out
    return [values[o.name] for o in model.graph.output]


def export(model, x, **kw):
    f = io.BytesIO()
    torch.onnx.export(model, x, f, input_names=["x"], output_names=["y"], **kw)
    proto = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(proto)
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {""}, domains
    ops = {node.op_type for node in proto.graph.node}
    assert not any("bnorm" in op or "Python" in op for op in ops), ops
    return proto


@pytest.mark.parametrize("opset", [9, 13, 15])
def test_onnx_export_resnet_matches_eager(opset):
    model = resnet().eval()
    proto = export(model, batch(1), opset_version=opset)
    ops = [node.op_type for node in proto.graph.node]
    # Folded into the convolutions, as the exporter does for torch.nn's layers.
    assert ops.count("Conv") == 20 and "BatchNormalization" not in ops, ops
    x = batch(2)
    (got,) = evaluate_onnx(proto, {"x": x})
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_keeps_batch_normalization_without_a_conv():
    torch.manual_seed(0)
    model = bt.convert(torch.nn.Sequential(
        torch.nn.BatchNorm2d(3), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8),
        torch.nn.BatchNorm1d(8, affine=False), torch.nn.ReLU()))
    for _ in range(3):
        model(torch.randn(16, 3, 4, 4))  # running statistics away from their init
    model.eval()
    proto = export(model, torch.randn(2, 3, 4, 4), opset_version=13)
    bn = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert len(bn) == 2
    assert abs(_attributes(bn[0])["momentum"] - 0.9) < 1e-7  # ONNX's decay = 1 - torch's
    x = torch.randn(5, 3, 4, 4)
    (got,) = evaluate_onnx(proto, {"x": x})
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)


def test_onnx_export_in_training_mode_says_why_not():
    model = bt.BatchNorm2d(3).train()
    with pytest.raises(Exception, match="eval mode"):
        torch.onnx.export(model, torch.randn(2, 3, 4, 4), io.BytesIO(),
                          training=torch.onnx.TrainingMode.PRESERVE)
