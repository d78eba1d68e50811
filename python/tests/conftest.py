"""Shared set-up: the bnorm under test is the built one, torch runs on one thread."""

import importlib.util
import os
import sys

import bnorm
import torch

import oracle

# The extension is built into the build tree; a source checkout has no _bnorm.
assert os.path.exists(bnorm._bnorm.__file__), bnorm._bnorm.__file__

# torch.testing._internal imports expecttest, which Debian 12 does not package.
if importlib.util.find_spec("expecttest") is None:
    sys.path.append(os.path.join(os.path.dirname(__file__), "stubs"))

# The machines are shared; one thread keeps torch's timing out of the way.
torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter):
    write = terminalreporter.write_line
    for note in oracle.NOTES:
        write(note)
    if not oracle.ERRORS:
        return
    write("largest |bnorm - torch|, and as a multiple of eps x scale "
          f"(allowed {oracle.TOLERANCE}):")
    for (dtype, quantity), (ratio, err) in sorted(oracle.ERRORS.items()):
        write(f"  {dtype:8s} {quantity:28s} {err:10.3g}  {ratio:6.2f} eps x scale")
