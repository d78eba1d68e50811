"""Loads the operators torch.ops.bnorm.* from the shared library built beside this file."""

import os

import torch

library_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libbnorm_torch.so")
if not os.path.exists(library_path):
    raise ImportError(f"bnorm.torch: the operator library {library_path} is missing; "
                      "it is built with the project (CMake finds libtorch)")
torch.ops.load_library(library_path)
