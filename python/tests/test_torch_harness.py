"""PyTorch's own module tests, run on bnorm.torch.

Every BatchNorm1d/2d/3d spec of torch.testing._internal.common_nn
(module_tests + new_module_tests) is run by PyTorch's NewModuleTest harness:
gradcheck and gradgradcheck with batched gradients, non-contiguous input and
gradient, pickling (torch.save/torch.load of the module), eval mode,
float/double casts and the zero-size batches. The same specs run on
torch.nn's modules as the control, so a harness problem shows up on both.
"""

import copy

import pytest
import torch
from torch.testing._internal import common_nn
from torch.testing._internal.common_utils import freeze_rng_state

import bnorm.torch as bt

NAMES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
SPECS = [spec for spec in common_nn.module_tests + common_nn.new_module_tests
         if spec.get("module_name") in NAMES]
IMPLEMENTATIONS = {"bnorm": bt, "torch": torch.nn}


class ModuleTestCase(common_nn.NNTestCase):
    """The four hooks NNTestCase leaves to the test suite that uses it."""

    def runTest(self):  # a TestCase needs a test method to be constructed
        pass

    def _forward(self, module, input):
        with freeze_rng_state():
            return module(*input) if isinstance(input, tuple) else module(input)

    def _backward(self, module, input, output, grad_output, create_graph=False):
        output.backward(grad_output, retain_graph=True, create_graph=create_graph)
        if isinstance(input, tuple):
            return tuple(i.grad.data if i.grad is not None else None for i in input)
        return input.grad.data if input.grad is not None else None

    def _get_parameters(self, module):
        params = [p for p in module.parameters() if p.requires_grad]
        return params, [p.grad for p in params]

    def _zero_grad_parameters(self, module):
        for p in module.parameters():
            if p.grad is not None:
                with torch.no_grad():
                    p.grad.zero_()
                p.grad.detach_()


@pytest.fixture(autouse=True)
def double_by_default():
    """As PyTorch's test_nn.py: specs build double tensors, so gradcheck is meaningful."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.double)
    yield
    torch.set_default_dtype(previous)


def test_every_batch_norm_spec_is_collected():
    assert len(SPECS) == 19, [s.get("desc") for s in SPECS]
    assert {s["module_name"] for s in SPECS} == set(NAMES)


def spec_id(spec):
    return spec["module_name"] + ("_" + spec["desc"] if spec.get("desc") else "")


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_pytorch_module_spec(spec, implementation):
    params = copy.deepcopy(spec)
    module = getattr(IMPLEMENTATIONS[implementation], params.pop("module_name"))
    params["constructor"] = module
    params.pop("decorator", None)
    test = common_nn.NewModuleTest(**params)
    torch.manual_seed(0)
    test(ModuleTestCase())
    # The harness really ran the module under test.
    assert isinstance(test.constructor(*test.constructor_args), module)
