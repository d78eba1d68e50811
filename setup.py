"""Builds the bnorm Python package with the project's CMake (see pyproject.toml).

The two compiled pieces, the pybind11 module bnorm._bnorm and the PyTorch
operator library bnorm/torch/libbnorm_torch.so, come from one CMake build
of the core in setuptools' build_temp; the pure-Python files come from
python/bnorm. CMake needs Debian's cmake, ninja-build, g++, libhwy-dev,
pybind11-dev, python3-dev and, for the operators, libtorch-dev
(scripts/install-deps.sh installs them). CMAKE_BUILD_PARALLEL_LEVEL sets the
build's jobs, BNORM_BUILD_TYPE its CMake build type (default Release).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    def build_extensions(self):
        # build/pip: two levels under the source root, as the presets'
        # build/<name>, so that ccache (CCACHE_BASEDIR at the source root)
        # serves the objects a preset build compiled with the same flags;
        # the pip-install test sets BNORM_BUILD_TYPE to its build's type.
        build_dir = Path(self.build_temp).resolve().parent / "pip"
        build_type = os.environ.get("BNORM_BUILD_TYPE", "Release")
        configure = ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
                     f"-DCMAKE_BUILD_TYPE={build_type}", "-DBNORM_BUILD_TESTS=OFF",
                     "-DBNORM_BUILD_TOOLS=OFF", "-DBNORM_BUILD_DEMO=OFF",
                     "-DBNORM_BUILD_BENCH=OFF", "-DBNORM_BUILD_MPI=OFF",
                     "-DBNORM_BUILD_PYTHON=ON", f"-DBNORM_PYTHON={sys.executable}"]
        subprocess.run(configure, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)
        built = build_dir / "python" / "bnorm"
        module = next(built.glob("_bnorm*.so"))
        target = Path(self.get_ext_fullpath("bnorm._bnorm"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module, target)
        operators = built / "torch" / "libbnorm_torch.so"
        if operators.exists():  # built where CMake found libtorch
            (target.parent / "torch").mkdir(parents=True, exist_ok=True)
            shutil.copy2(operators, target.parent / "torch" / operators.name)


setup(
    package_dir={"": "python"},
    packages=["bnorm", "bnorm.torch"],
    ext_modules=[Extension("bnorm._bnorm", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
