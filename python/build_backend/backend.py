"""PEP 517 build backend: setuptools, taken from the system when pip isolates the build.

pip builds in an isolated environment and would download the backend's
requirements from an index; these machines reach none but Debian's. The
project therefore declares no build requirements and this shim puts the
interpreter's own site directories (Debian's dist-packages with
python3-setuptools and python3-wheel) behind the isolated environment's path
before handing every hook to setuptools.build_meta unchanged.
"""

import os
import site
import sys


def _system_site_dirs():
    base = sys.base_prefix
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.join(base, "lib", "python3", "dist-packages"),
                  os.path.join(base, "lib", version, "dist-packages"),
                  os.path.join(base, "lib", version, "site-packages")]
    candidates += getattr(site, "getsitepackages", lambda: [])()
    return [d for d in candidates if os.path.isdir(d)]


try:
    import setuptools  # noqa: F401  (present: a --no-isolation build)
except ImportError:
    for directory in _system_site_dirs():
        if directory not in sys.path:
            sys.path.append(directory)

from setuptools.build_meta import *  # noqa: E402,F401,F403


# setuptools asks pip for `wheel` to build a wheel; it is Debian's
# python3-wheel, already on the path above, so nothing is to be installed.
def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []
